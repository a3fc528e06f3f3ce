"""What both var_hf models share: strict loading, saved folders that load through the Auto classes, and the selective
activation-checkpointing policy.

Strict loading. transformers loads a checkpoint whose keys disagree with the configuration by initialising what is
missing at random, dropping what is unexpected and logging a table; a folder whose config.json says depth 3 next to
depth-2 weights would load as a model with one random block. [`VARHFPreTrainedModel`] refuses instead: any missing,
unexpected or (unless `ignore_mismatched_sizes=True` is passed explicitly) mismatched key is an error that names the
keys and the likely cause. The check runs in transformers' load-time hook `_finalize_model_loading`, before anything
is initialised, and again on the loading report `from_pretrained` returns (in case a transformers version stops calling
the hook). An
unreadable weight file (truncated, not safetensors) is an error that names the file. The configuration side (no
config.json, another model's config.json, wrongly typed fields) is checked by `configuration_utils.VARHFConfig`.

Auto classes. transformers 5 and diffusers 0.42 know no entry-point registry for third-party models; `auto_map` with
`trust_remote_code=True` is what both honour. `save_pretrained` writes `var_hf_auto.py`, a module that only imports
the classes from the installed package, next to the weights and points `auto_map` in config.json at it, so in a
process that has not imported var_hf

    transformers.AutoModel.from_pretrained(model_folder, trust_remote_code=True)
    diffusers.AutoModel.from_pretrained(model_folder, trust_remote_code=True)

load the model. transformers looks for `auto_map` modules at the root of a repository even with `subfolder=`, and
diffusers' `AutoModel` with `subfolder=` reads `auto_map` from model_index.json: a saved pipeline also needs the
root module and the model_index.json entry that [`write_pipeline_auto_files`] writes, and then

    transformers.AutoModel.from_pretrained(pipeline_folder, subfolder="transformer", trust_remote_code=True)
    diffusers.AutoModel.from_pretrained(pipeline_folder, subfolder="vqvae", trust_remote_code=True)

work too. [`add_auto_class_files`] adds all of this to a folder saved before. Once var_hf is imported (which registers
both models with transformers' Auto classes) the transformers forms need no `trust_remote_code`.
"""

import glob
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
from transformers import PreTrainedModel
from transformers.utils import logging

from .file_utils import write_text_atomically

logger = logging.get_logger(__name__)

# How many key names an error message lists before it gives the count of the rest.
MAX_KEYS_SHOWN = 5


class WeightsMismatchError(ValueError):
    """A checkpoint's weights do not fit the model its config.json describes."""


def _first_keys(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_KEYS_SHOWN])
    return shown + (f", ... ({len(keys) - MAX_KEYS_SHOWN} more)" if len(keys) > MAX_KEYS_SHOWN else "")


def _shape(shape) -> Tuple[int, ...]:
    return tuple(int(n) for n in shape)


def check_loading_info(
    model: "VARHFPreTrainedModel", source, loading_info, ignore_mismatched_sizes: bool = False, warn: bool = True
):
    """Raise `WeightsMismatchError` if `loading_info` (transformers' `LoadStateDictInfo` or its dict form) reports any
    missing or unexpected key, or a mismatched shape that the caller did not explicitly accept (those accepted are
    logged when `warn`)."""
    info = loading_info if isinstance(loading_info, dict) else loading_info.to_dict()
    missing, unexpected = set(info.get("missing_keys") or ()), set(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched and ignore_mismatched_sizes and not (missing or unexpected):
        if warn:
            logger.warning(
                f"{type(model).__name__} from {source}: {len(mismatched)} weights have other shapes in the checkpoint "
                f"and start from random values, as ignore_mismatched_sizes=True asked: "
                f"{_first_keys(k for k, *_ in mismatched)}."
            )
        mismatched = []
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights the config asks for are not in the checkpoint: {_first_keys(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} weights in the checkpoint have no place in the model: {_first_keys(unexpected)}")
    if mismatched:
        shown = ", ".join(
            f"{key} (checkpoint {_shape(ckpt)}, model {_shape(expected)})"
            for key, ckpt, expected in mismatched[:MAX_KEYS_SHOWN]
        )
        more = f", ... ({len(mismatched) - MAX_KEYS_SHOWN} more)" if len(mismatched) > MAX_KEYS_SHOWN else ""
        parts.append(f"{len(mismatched)} weights have another shape in the checkpoint: {shown}{more}")
    expected_keys = set(model.state_dict().keys())
    checkpoint_keys = (expected_keys - missing) | unexpected
    cause = model.likely_loading_cause(checkpoint_keys, expected_keys) or (
        "config.json does not describe these weights (the two files come from different models or were edited)"
    )
    raise WeightsMismatchError(
        f"Cannot load {type(model).__name__} from {source}: its config.json and weights disagree. "
        + "; ".join(parts)
        + f". Likely cause: {cause}. Load the folder that save_pretrained wrote for this model, or fix config.json "
        "to match the weights. Nothing was loaded: var_hf never fills missing weights at random."
    )


def _weight_files(source, subfolder: Optional[str]) -> List[str]:
    folder = os.path.join(str(source), subfolder or "")
    return sorted(glob.glob(os.path.join(folder, "*.safetensors"))) if os.path.isdir(folder) else []


def unreadable_weights_error(source, subfolder: Optional[str], error: Exception) -> OSError:
    """An `OSError` naming the weight file that safetensors could not read (or the folder, if none can be told)."""
    from safetensors import safe_open

    culprit = None
    for path in _weight_files(source, subfolder):
        try:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        except Exception:  # the file that fails to open is the one to name
            culprit = path
            break
    where = culprit or (os.path.join(str(source), subfolder) if subfolder else str(source))
    return OSError(
        f"Cannot read the weights in {where}: {error}. The file is truncated or not a safetensors file (an "
        "interrupted download or copy?); download or save it again."
    )


# ----------------------------------------------------------------------------------------------------------------------
# Selective activation checkpointing (`VARTransformer.enable_selective_checkpointing`)
# ----------------------------------------------------------------------------------------------------------------------


# A block keeps the outputs of its matrix products and attention (expensive to recompute) and recomputes the pointwise work around them (LayerNorm, AdaLN modulation, casts, GELU, gates), which
# holds most of a block's saved bytes and costs little to redo.
_aten = torch.ops.aten
SELECTIVE_CHECKPOINT_SAVED_OPS = frozenset(
    {
        _aten.mm.default,
        _aten.addmm.default,
        _aten.bmm.default,
        _aten._scaled_dot_product_efficient_attention.default,
        _aten._scaled_dot_product_flash_attention.default,
        _aten._scaled_dot_product_flash_attention_for_cpu.default,
        _aten._scaled_dot_product_cudnn_attention.default,
    }
)


def _selective_checkpoint_policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in SELECTIVE_CHECKPOINT_SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def selective_checkpoint_context():
    """`context_fn` for `torch.utils.checkpoint.checkpoint`: PyTorch's selective activation checkpointing with the
    policy above."""
    return create_selective_checkpoint_contexts(_selective_checkpoint_policy)


# ----------------------------------------------------------------------------------------------------------------------
# The base of both models
# ----------------------------------------------------------------------------------------------------------------------


class VARHFPreTrainedModel(PreTrainedModel):
    """`PreTrainedModel` with strict `from_pretrained` and Auto-class metadata in `save_pretrained` (see the module
    docstring). Subclasses may override [`likely_loading_cause`]."""

    def likely_loading_cause(self, checkpoint_keys: set, expected_keys: set) -> Optional[str]:
        """A sentence on why a checkpoint's keys do not fit this model, or None for the generic one."""
        return None

    # ------------------------------------------------------------------ loading

    @staticmethod
    def _finalize_model_loading(model, load_config, loading_info):
        # Runs after the weights are read and before transformers initialises what is missing: refuse here, so a
        # bad folder costs no random initialisation and prints no loading table before the error.
        check_loading_info(
            model, load_config.pretrained_model_name_or_path, loading_info, load_config.ignore_mismatched_sizes
        )
        return PreTrainedModel._finalize_model_loading(model, load_config, loading_info)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """transformers' `from_pretrained`, refusing (with `WeightsMismatchError`, `OSError` or `ValueError`) a
        folder whose weights do not match its config.json exactly, one without config.json, one holding another
        model, and an unreadable weight file. `ignore_mismatched_sizes=True` accepts weights of other shapes
        (re-initialised, with a warning), never missing or unexpected ones."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except Exception as error:
            if type(error).__name__ == "SafetensorError":
                raise unreadable_weights_error(pretrained_model_name_or_path, kwargs.get("subfolder"), error) from error
            raise
        # Again on the returned report, in case a transformers version stops calling the hook (no second warning).
        check_loading_info(
            model, pretrained_model_name_or_path, loading_info, kwargs.get("ignore_mismatched_sizes", False), warn=False
        )
        return (model, loading_info) if output_loading_info else model

    # ------------------------------------------------------------------ saving

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`, plus `auto_map` in config.json and the shim module it names (see the
        module docstring)."""
        self.config.auto_map = component_auto_map(type(self))
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if os.path.isdir(save_directory):
            write_text_atomically(os.path.join(save_directory, AUTO_SHIM_FILE), auto_shim_source([type(self)]))
        return result


# ----------------------------------------------------------------------------------------------------------------------
# Auto-class files
# ----------------------------------------------------------------------------------------------------------------------

# The module saved next to the weights (and at the root of a saved pipeline) that `auto_map` points at.
AUTO_SHIM_MODULE = "var_hf_auto"
AUTO_SHIM_FILE = AUTO_SHIM_MODULE + ".py"
# diffusers' `AutoModel.from_pretrained(pipeline, subfolder=...)` reads `auto_map` from model_index.json, one class
# name for every component: each component's shim defines it.
COMPONENT_ALIAS = "Component"


def component_auto_map(model_class: type) -> Dict[str, str]:
    """The `auto_map` of a component's config.json: both Auto classes resolve to the shim module."""
    return {
        "AutoConfig": f"{AUTO_SHIM_MODULE}.{model_class.config_class.__name__}",
        "AutoModel": f"{AUTO_SHIM_MODULE}.{model_class.__name__}",
    }


def pipeline_auto_map() -> Dict[str, str]:
    """The `auto_map` of a saved pipeline's model_index.json, for diffusers' `AutoModel` with `subfolder=`."""
    return {"AutoModel": f"{AUTO_SHIM_MODULE}.{COMPONENT_ALIAS}"}


def auto_shim_source(model_classes: Sequence[type]) -> str:
    """A module that imports `model_classes` and their configurations from the installed var_hf. With one class it
    also names it `Component` (see `pipeline_auto_map`)."""
    lines = [
        '"""Loads var_hf models from the installed package (`pip install var_hf`) for the Auto classes of transformers',
        'and diffusers: `AutoModel.from_pretrained(..., trust_remote_code=True)`. Written by var_hf\'s save_pretrained."""',
        "",
    ]
    for model_class in model_classes:
        config_class = model_class.config_class
        lines.append(f"from {config_class.__module__} import {config_class.__name__}  # noqa: F401")
        lines.append(f"from {model_class.__module__} import {model_class.__name__}  # noqa: F401")
    if len(model_classes) == 1:
        lines += ["", f"{COMPONENT_ALIAS} = {model_classes[0].__name__}"]
    return "\n".join(lines) + "\n"


def write_pipeline_auto_files(save_directory, model_classes: Sequence[type]) -> Dict[str, str]:
    """Write the root shim of a saved pipeline holding `model_classes` and return the `auto_map` for its
    model_index.json. transformers looks for `auto_map` modules at the root of a folder even with `subfolder=`, so
    `transformers.AutoModel.from_pretrained(pipeline, subfolder="transformer", trust_remote_code=True)` needs it."""
    write_text_atomically(os.path.join(save_directory, AUTO_SHIM_FILE), auto_shim_source(list(model_classes)))
    return pipeline_auto_map()


def add_auto_class_files(pipeline_directory) -> List[str]:
    """Give an already saved pipeline folder (or a single model's folder) what a new `save_pretrained` writes for the
    Auto classes: `auto_map` in every var_hf component's config.json, the shim modules, and in a pipeline
    model_index.json's `auto_map`. Returns the files written. Weights are not touched."""
    import json

    from .file_utils import write_json_atomically

    written, model_classes = [], []
    folders = [pipeline_directory] + [
        os.path.join(pipeline_directory, name) for name in sorted(os.listdir(pipeline_directory))
    ]
    for folder in folders:
        config_path = os.path.join(folder, "config.json")
        if not os.path.isfile(config_path):
            continue
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        model_class = _var_hf_model_class(config.get("model_type"))
        if model_class is None:
            continue
        config["auto_map"] = component_auto_map(model_class)
        write_json_atomically(config_path, config)
        write_text_atomically(os.path.join(folder, AUTO_SHIM_FILE), auto_shim_source([model_class]))
        written += [config_path, os.path.join(folder, AUTO_SHIM_FILE)]
        model_classes.append(model_class)
    index_path = os.path.join(pipeline_directory, "model_index.json")
    if os.path.isfile(index_path) and model_classes:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
        index["auto_map"] = write_pipeline_auto_files(pipeline_directory, model_classes)
        write_json_atomically(index_path, index)
        written += [index_path, os.path.join(pipeline_directory, AUTO_SHIM_FILE)]
    return written


def _var_hf_model_class(model_type: Optional[str]) -> Optional[type]:
    if model_type == "var_transformer":
        from .modeling_var import VARTransformer

        return VARTransformer
    if model_type == "var_multiscale_vqvae":
        from .modeling_vqvae import MultiScaleVQVAE

        return MultiScaleVQVAE
    return None


__all__ = [
    "AUTO_SHIM_FILE",
    "SELECTIVE_CHECKPOINT_SAVED_OPS",
    "VARHFPreTrainedModel",
    "WeightsMismatchError",
    "add_auto_class_files",
    "auto_shim_source",
    "check_loading_info",
    "component_auto_map",
    "pipeline_auto_map",
    "selective_checkpoint_context",
    "unreadable_weights_error",
    "write_pipeline_auto_files",
]
