"""Loads var_hf models from the installed package (`pip install var_hf`) for the Auto classes of transformers
and diffusers: `AutoModel.from_pretrained(..., trust_remote_code=True)`. Written by var_hf's save_pretrained."""

from var_hf.configuration_var import VARTransformerConfig  # noqa: F401
from var_hf.modeling_var import VARTransformer  # noqa: F401
from var_hf.configuration_vqvae import MultiScaleVQVAEConfig  # noqa: F401
from var_hf.modeling_vqvae import MultiScaleVQVAE  # noqa: F401
