"""var_hf: VAR (Visual AutoRegressive modeling, next-scale prediction) as Hugging Face models and pipelines."""

import os

from transformers import AutoConfig, AutoModel

from .configuration_var import NAMED_VAR_CONFIGS, VARTransformerConfig
from .configuration_vqvae import NAMED_VQVAE_CONFIGS, PATCH_NUMS_256, PATCH_NUMS_512, MultiScaleVQVAEConfig
from .modeling_var import VARKVCache, VARTransformer, VARTransformerOutput
from .modeling_vqvae import MultiScaleVQVAE, MultiScaleVQVAEOutput
from .scheduling_var import VARScaleScheduler, VARSchedulerOutput
from .pipelines import VARPipeline, VARPipelineOutput  # noqa: E402  (needs the models above)

__version__ = "0.1.0"

# The bundled default pipeline (Fashion-MNIST, 32x32): `VARPipeline.from_pretrained(var_hf.DEFAULT_MODEL)`.
DEFAULT_MODEL = os.path.join(os.path.dirname(__file__), "default_model")

AutoConfig.register(MultiScaleVQVAEConfig.model_type, MultiScaleVQVAEConfig, exist_ok=True)
AutoConfig.register(VARTransformerConfig.model_type, VARTransformerConfig, exist_ok=True)
AutoModel.register(MultiScaleVQVAEConfig, MultiScaleVQVAE, exist_ok=True)
AutoModel.register(VARTransformerConfig, VARTransformer, exist_ok=True)

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
