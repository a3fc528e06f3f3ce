"""How a saved [`VARPipeline`] folder is found, checked and laid out for diffusers' loaders.

- `VARPipeline.from_pretrained(folder_or_repo_id)`: a repo id is fetched with `huggingface_hub.snapshot_download`
  (diffusers cannot resolve var_hf's components from a repo id itself); `model_index.json` must name var_hf's
  classes for `vqvae`, `transformer` and `scheduler` ([`check_model_index`]), so a folder of another pipeline is
  refused before any weights load.
- `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`: `save_pretrained` writes a one-line
  `pipeline.py` that imports var_hf's pipeline, and `_class_name: ["pipeline", "VARPipeline"]` in `model_index.json`,
  the form diffusers reads for pipelines whose code lives with the weights (as Hub community pipelines do).
  `VARPipeline.from_pretrained` reads that entry as its own class and never runs the file.
"""

import importlib
import json
import os
from typing import Dict, Optional

GENERIC_LOADER_MODULE = "pipeline"
GENERIC_LOADER_SOURCE = '''"""VAR pipeline: `DiffusionPipeline.from_pretrained(<this folder>, trust_remote_code=True)` loads it with diffusers'
generic loader (`pip install var-hf`); `var_hf.VARPipeline.from_pretrained(<this folder>)` needs no remote code."""

from var_hf.pipelines.pipeline_var import VARPipeline  # noqa: F401
'''
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "proxies")


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


def read_generic_class_name(config: dict, class_name: str) -> dict:
    """In a loaded `model_index.json` dict, `["pipeline", class_name]` -> `class_name` (in place)."""
    if list(config.get("_class_name") or []) == generic_class_name(class_name):
        config["_class_name"] = class_name
    return config


__all__ = [
    "GENERIC_LOADER_MODULE",
    "GENERIC_LOADER_SOURCE",
    "check_model_index",
    "generic_class_name",
    "read_generic_class_name",
    "resolve_local_folder",
]
