"""How a saved [`VARPipeline`] folder is found, checked and laid out for diffusers' loaders.

- `VARPipeline.from_pretrained(folder_or_repo_id)`: a repo id is fetched with `huggingface_hub.snapshot_download`
  (diffusers cannot resolve var_hf's components from a repo id itself); `model_index.json` must name var_hf's
  classes for `vqvae`, `transformer` and `scheduler` ([`check_model_index`]), so a folder of another pipeline is
  refused before any weights load.
- `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`: `save_pretrained` writes a one-line
  `pipeline.py` that imports var_hf's pipeline, and `_class_name: ["pipeline", "VARPipeline"]` in `model_index.json`,
  the form diffusers reads for pipelines whose code lives with the weights (as Hub community pipelines do).
  `VARPipeline.from_pretrained` reads that entry as its own class and never runs the file.
- Components on their own: `save_pretrained` also writes the root `var_hf_auto.py` and `auto_map` in
  `model_index.json` ([`var_hf.modeling_utils.write_pipeline_auto_files`]), so that
  `transformers.AutoModel.from_pretrained(folder, subfolder="transformer", trust_remote_code=True)` and
  `diffusers.AutoModel.from_pretrained(folder, subfolder="vqvae", trust_remote_code=True)` work in a process that has
  not imported var_hf. Loading the pipeline drops `auto_map` (no `__init__` argument of the pipeline).
"""

import importlib
import json
import os
from typing import Dict, Optional

from var_hf.file_utils import write_text_atomically
from var_hf.modeling_utils import VARHFPreTrainedModel, pipeline_auto_map, write_pipeline_auto_files

GENERIC_LOADER_MODULE = "pipeline"
GENERIC_LOADER_CLASS = "VARPipeline"
GENERIC_LOADER_SOURCE = '''"""VAR pipeline: `DiffusionPipeline.from_pretrained(<this folder>, trust_remote_code=True)` loads it with diffusers'
generic loader (`pip install var-hf`); `var_hf.VARPipeline.from_pretrained(<this folder>)` needs no remote code."""

from var_hf.pipelines.pipeline_var import VARPipeline  # noqa: F401
'''
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "proxies")
# The model_index.json key for diffusers' `AutoModel` (written on save, dropped on load).
AUTO_MAP_KEY = "auto_map"


def generic_class_name(class_name: str) -> list:
    """The `_class_name` entry that points diffusers' generic loader at the saved `pipeline.py`."""
    return [GENERIC_LOADER_MODULE, class_name]


def resolve_local_folder(pretrained_model_name_or_path, kwargs: Dict) -> str:
    """A local folder as is; a Hub repo id -> its snapshot (pops the Hub keyword arguments from `kwargs`)."""
    path = os.fspath(pretrained_model_name_or_path)
    hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    if os.path.isdir(path):
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id=path, **hub_kwargs)
    except Exception as err:  # huggingface_hub raises many types; all mean "could not get the files"
        raise OSError(
            f"Could not load a VAR pipeline from {path!r}: it is not a local folder and the Hub snapshot could not be "
            f"fetched ({type(err).__name__}: {err})."
        ) from err


def check_model_index(folder: str, component_classes: Dict[str, type]) -> Optional[dict]:
    """Refuse a `model_index.json` whose components are not var_hf's expected classes (or subclasses), naming the
    component, what the file says and what it should say. Returns the index (None when the file is missing, which
    diffusers reports itself)."""
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        return None
    with open(index_path, encoding="utf-8") as f:
        try:
            index = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{index_path} is not valid JSON ({err}).") from err
    for name, expected in component_classes.items():
        entry = index.get(name)
        library, class_name = entry if isinstance(entry, list) and len(entry) == 2 else (None, entry)
        found = None
        if isinstance(library, str) and (library == "var_hf" or library.startswith("var_hf.")):
            try:
                found = getattr(importlib.import_module(library), str(class_name), None)
            except ImportError:
                found = None
        if not (isinstance(found, type) and issubclass(found, expected)):
            raise ValueError(
                f"{index_path} gives {entry!r} as the pipeline's {name!r}; a VARPipeline needs var_hf's "
                f"{expected.__name__} there ([\"{expected.__module__}\", \"{expected.__name__}\"]). This folder holds "
                f"another kind of pipeline, or its model_index.json was edited."
            )
    return index


def check_components(components: Dict[str, object], component_classes: Dict[str, type]):
    """Each component is an instance of its class, and the three agree on the patch schedule and the codebook."""
    for name, component in components.items():
        if not isinstance(component, component_classes[name]):
            raise ValueError(f"{name} must be a {component_classes[name].__name__}, got {type(component).__name__}.")
    vq, tr, sch = (components[name].config for name in ("vqvae", "transformer", "scheduler"))
    if list(vq.patch_nums) != list(tr.patch_nums) or list(sch.patch_nums) != list(tr.patch_nums):
        raise ValueError(
            f"patch_nums differ between components: vqvae {list(vq.patch_nums)}, transformer {list(tr.patch_nums)}, "
            f"scheduler {list(sch.patch_nums)}; they must be equal."
        )
    if vq.vocab_size != tr.vocab_size or vq.vq_embed_dim != tr.vq_embed_dim:
        raise ValueError(f"The transformer (vocab {tr.vocab_size}, code dim {tr.vq_embed_dim}) does not fit the "
                         f"VQVAE (vocab {vq.vocab_size}, code dim {vq.vq_embed_dim}).")


def read_generic_class_name(config: dict, class_name: str) -> dict:
    """In a loaded `model_index.json` dict, `["pipeline", class_name]` -> `class_name` (in place)."""
    if list(config.get("_class_name") or []) == generic_class_name(class_name):
        config["_class_name"] = class_name
    return config


class VARPipelineLoadingMixin:
    """`from_pretrained` / `save_pretrained` of [`VARPipeline`] (mixed in before `DiffusionPipeline`): loading needs
    no `trust_remote_code` and refuses foreign components; saving adds `pipeline.py` for diffusers' generic loader."""

    _component_classes: Dict[str, type] = {}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load from a local folder or a Hub repo id (`revision`, `cache_dir`, `token`, `local_files_only`, `proxies`
        are honoured). The folder's `pipeline.py` is not run; components that are not var_hf's are refused."""
        path = resolve_local_folder(pretrained_model_name_or_path, kwargs)
        check_model_index(path, cls._component_classes)
        return super().from_pretrained(path, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' `load_config`; `_class_name: ["pipeline", "VARPipeline"]` reads as `"VARPipeline"`."""
        loaded = super().load_config(*args, **kwargs)
        read_generic_class_name(loaded[0] if isinstance(loaded, tuple) else loaded, GENERIC_LOADER_CLASS)
        return loaded

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' `extract_init_dict` without `auto_map` (for the Auto classes, not an `__init__` argument):
        diffusers would warn about it twice on every load, through any loader."""
        config_dict = {key: value for key, value in config_dict.items() if key != AUTO_MAP_KEY}
        return super().extract_init_dict(config_dict, **kwargs)

    def _saves_generic_loader(self) -> bool:
        return type(self).__name__ == GENERIC_LOADER_CLASS  # subclasses save as themselves

    def _auto_model_classes(self) -> list:
        """The var_hf model classes among the components (in component-name order, each once)."""
        classes = []
        for name in sorted(self.components):
            component_class = type(self.components[name])
            if issubclass(component_class, VARHFPreTrainedModel) and component_class not in classes:
                classes.append(component_class)
        return classes

    def save_pretrained(self, save_directory, **kwargs):
        """diffusers' `save_pretrained`, plus `pipeline.py` for diffusers' generic loader and the root
        `var_hf_auto.py` + `auto_map` for the Auto classes (see the module docstring)."""
        os.makedirs(save_directory, exist_ok=True)
        if self._saves_generic_loader():
            write_text_atomically(os.path.join(save_directory, f"{GENERIC_LOADER_MODULE}.py"), GENERIC_LOADER_SOURCE)
        write_pipeline_auto_files(save_directory, self._auto_model_classes())
        super().save_pretrained(save_directory, **kwargs)

    def to_json_string(self) -> str:
        config = json.loads(super().to_json_string())
        if self._saves_generic_loader():
            config["_class_name"] = generic_class_name(GENERIC_LOADER_CLASS)
        if self._auto_model_classes():  # save_pretrained writes the module it names
            config[AUTO_MAP_KEY] = pipeline_auto_map()
        return json.dumps(config, indent=2, sort_keys=True) + "\n"


__all__ = [
    "AUTO_MAP_KEY",
    "GENERIC_LOADER_CLASS",
    "GENERIC_LOADER_MODULE",
    "GENERIC_LOADER_SOURCE",
    "check_components",
    "check_model_index",
    "generic_class_name",
    "read_generic_class_name",
    "resolve_local_folder",
    "VARPipelineLoadingMixin",
]
