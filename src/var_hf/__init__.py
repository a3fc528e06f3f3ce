"""var_hf: VAR (Visual AutoRegressive modeling, next-scale prediction) as Hugging Face models and pipelines.

The package root imports nothing heavy: `import var_hf`, `var_hf.__version__` and `var_hf.DEFAULT_MODEL` load neither
torch, transformers nor diffusers, so command-line help answers quickly. Every other public name is imported from its
module on first use (`from var_hf import VARPipeline` works as usual). Importing a model module registers its classes
with transformers' `AutoConfig`/`AutoModel`, so no import order matters.
"""

import importlib
import os
from typing import TYPE_CHECKING, Any, List

__version__ = "0.1.0"

# The bundled default pipeline (Fashion-MNIST, 32x32): `VARPipeline.from_pretrained(var_hf.DEFAULT_MODEL)`.
DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "default_model")

# Public name -> the module that defines it (imported on first access).
_LAZY_IMPORTS = {
    "MultiScaleVQVAEConfig": "var_hf.configuration_vqvae",
    "NAMED_VQVAE_CONFIGS": "var_hf.configuration_vqvae",
    "PATCH_NUMS_256": "var_hf.patch_schedules",
    "PATCH_NUMS_512": "var_hf.patch_schedules",
    "NAMED_VAR_CONFIGS": "var_hf.configuration_var",
    "VARTransformerConfig": "var_hf.configuration_var",
    "MultiScaleVQVAE": "var_hf.modeling_vqvae",
    "MultiScaleVQVAEOutput": "var_hf.modeling_vqvae",
    "VARKVCache": "var_hf.modeling_var",
    "VARTransformer": "var_hf.modeling_var",
    "VARTransformerOutput": "var_hf.modeling_var",
    "VARScaleScheduler": "var_hf.scheduling_var",
    "VARSchedulerOutput": "var_hf.scheduling_var",
    "VARPipeline": "var_hf.pipelines",
    "VARPipelineOutput": "var_hf.pipelines",
}

if TYPE_CHECKING:  # editors and type checkers see the real imports
    from .configuration_var import NAMED_VAR_CONFIGS, VARTransformerConfig
    from .configuration_vqvae import NAMED_VQVAE_CONFIGS, MultiScaleVQVAEConfig
    from .modeling_var import VARKVCache, VARTransformer, VARTransformerOutput
    from .modeling_vqvae import MultiScaleVQVAE, MultiScaleVQVAEOutput
    from .patch_schedules import PATCH_NUMS_256, PATCH_NUMS_512
    from .pipelines import VARPipeline, VARPipelineOutput
    from .scheduling_var import VARScaleScheduler, VARSchedulerOutput


def __getattr__(name: str) -> Any:
    module_name = _LAZY_IMPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'var_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> List[str]:
    return sorted({*globals(), *_LAZY_IMPORTS})


__all__ = [
    "DEFAULT_MODEL",
    "MultiScaleVQVAE",
    "MultiScaleVQVAEConfig",
    "MultiScaleVQVAEOutput",
    "NAMED_VAR_CONFIGS",
    "NAMED_VQVAE_CONFIGS",
    "PATCH_NUMS_256",
    "PATCH_NUMS_512",
    "VARKVCache",
    "VARPipeline",
    "VARPipelineOutput",
    "VARScaleScheduler",
    "VARSchedulerOutput",
    "VARTransformer",
    "VARTransformerConfig",
    "VARTransformerOutput",
]
