"""Configuration of the multi-scale residual VQVAE (VAR's image tokenizer)."""

from typing import Sequence

from transformers import AutoConfig
from transformers.utils import logging

from .configuration_utils import (
    ConfigFieldError,
    VARHFConfig,
    check_bool,
    check_float,
    check_int,
    check_int_list,
    check_patch_nums,
)
from .patch_schedules import PATCH_NUMS_256, PATCH_NUMS_512, parse_patch_nums  # noqa: F401  (re-exported)

logger = logging.get_logger(__name__)


class MultiScaleVQVAEConfig(VARHFConfig):
    r"""
    Configuration of [`MultiScaleVQVAE`]: a VQGAN-style encoder/decoder around a multi-scale residual quantizer that
    turns an image into `len(patch_nums)` token maps, coarse to fine, drawn from one shared codebook (VAR, Sec. 3.2).

    Args:
        in_channels (`int`, *optional*, defaults to 3):
            Image channels.
        base_channels (`int`, *optional*, defaults to 160):
            Width of the first encoder level (the reference's `ch`).
        channel_multipliers (`Sequence[int]`, *optional*, defaults to `(1, 1, 2, 2, 4)`):
            Width multiplier per resolution level; the image is downsampled `2 ** (len - 1)` times.
        num_res_blocks (`int`, *optional*, defaults to 2):
            Residual blocks per encoder level (the decoder uses one more, as in the reference).
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout inside the residual blocks.
        use_attention (`bool`, *optional*, defaults to `True`):
            Self-attention after each residual block of the lowest-resolution level.
        use_mid_attention (`bool`, *optional*, defaults to `True`):
            Self-attention in the middle block.
        vocab_size (`int`, *optional*, defaults to 4096):
            Number of codebook entries (shared by all scales).
        vq_embed_dim (`int`, *optional*, defaults to 32):
            Dimension of a code (the reference's `Cvae` / `z_channels`).
        beta (`float`, *optional*, defaults to 0.25):
            Weight of the commitment term of the VQ loss.
        using_znorm (`bool`, *optional*, defaults to `False`):
            Nearest code by cosine similarity instead of L2 distance.
        quant_conv_kernel_size (`int`, *optional*, defaults to 3):
            Kernel of `quant_conv` and `post_quant_conv`.
        quant_resi (`float`, *optional*, defaults to 0.5):
            Mixing ratio r of the phi convolutions, `h * (1 - r) + conv(h) * r`; 0 disables them.
        share_quant_resi (`int`, *optional*, defaults to 4):
            0: one phi per scale; 1: one phi shared by all scales; K > 1: K phis, scale k uses the one whose tick is
            nearest to `k / (num_scales - 1)`.
        num_quant_resi (`int`, *optional*, defaults to 0):
            Number of phis when `share_quant_resi == 0` (0 means one per scale).
        patch_nums (`Sequence[int]`, *optional*, defaults to `(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)`):
            Side of each token map, coarse to fine. The last one equals the latent side, so the image side is
            `patch_nums[-1] * 2 ** (len(channel_multipliers) - 1)`.

    Example:

    ```python
    >>> from var_hf import MultiScaleVQVAE, MultiScaleVQVAEConfig
    >>> config = MultiScaleVQVAEConfig(base_channels=32, channel_multipliers=(1, 2), vocab_size=16, patch_nums=(1, 2, 4))
    >>> model = MultiScaleVQVAE(config)
    >>> model.config.image_size
    8

    ```
    """

    model_type = "var_multiscale_vqvae"

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 160,
        channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        dropout: float = 0.0,
        use_attention: bool = True,
        use_mid_attention: bool = True,
        vocab_size: int = 4096,
        vq_embed_dim: int = 32,
        beta: float = 0.25,
        using_znorm: bool = False,
        quant_conv_kernel_size: int = 3,
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        num_quant_resi: int = 0,
        patch_nums: Sequence[int] = PATCH_NUMS_256,
        **kwargs,
    ):
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.channel_multipliers = (
            list(channel_multipliers) if isinstance(channel_multipliers, (list, tuple)) else channel_multipliers
        )
        self.num_res_blocks = num_res_blocks
        self.dropout = dropout
        self.use_attention = use_attention
        self.use_mid_attention = use_mid_attention
        self.vocab_size = vocab_size
        self.vq_embed_dim = vq_embed_dim
        self.beta = beta
        self.using_znorm = using_znorm
        self.quant_conv_kernel_size = quant_conv_kernel_size
        self.quant_resi = quant_resi
        self.share_quant_resi = share_quant_resi
        self.num_quant_resi = num_quant_resi
        self.patch_nums = list(patch_nums) if isinstance(patch_nums, (list, tuple)) else patch_nums
        super().__init__(**kwargs)
        self.check_fields()

    def check_fields(self):
        """Types and ranges of every field, each error naming its field (see `configuration_utils`)."""
        check_int("in_channels", self.in_channels, minimum=1)
        check_int("base_channels", self.base_channels, minimum=1)
        self.channel_multipliers = check_int_list("channel_multipliers", self.channel_multipliers, minimum=1)
        check_int("num_res_blocks", self.num_res_blocks, minimum=1)
        check_float("dropout", self.dropout, minimum=0, maximum=1, exclusive_maximum=True)
        check_bool("use_attention", self.use_attention)
        check_bool("use_mid_attention", self.use_mid_attention)
        check_int("vocab_size", self.vocab_size, minimum=2)
        check_int("vq_embed_dim", self.vq_embed_dim, minimum=1)
        check_float("beta", self.beta, minimum=0)
        check_bool("using_znorm", self.using_znorm)
        check_int("quant_conv_kernel_size", self.quant_conv_kernel_size, minimum=1)
        if self.quant_conv_kernel_size % 2 == 0:
            raise ConfigFieldError(
                f"quant_conv_kernel_size must be odd (the convolution keeps the latent's size), got "
                f"{self.quant_conv_kernel_size}."
            )
        check_float("quant_resi", self.quant_resi)
        check_int("share_quant_resi", self.share_quant_resi, minimum=0)
        check_int("num_quant_resi", self.num_quant_resi, minimum=0)
        self.patch_nums = check_patch_nums(self.patch_nums)
        for mult in self.channel_multipliers:
            if (self.base_channels * mult) % 32:
                raise ConfigFieldError(
                    f"base_channels * channel_multiplier must be a multiple of 32 (GroupNorm has 32 groups), got "
                    f"{self.base_channels} * {mult}."
                )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_multipliers) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample_factor

    @property
    def num_phi(self) -> int:
        """How many phi convolutions the quantizer holds."""
        if abs(self.quant_resi) <= 1e-6:
            return 0
        if self.share_quant_resi == 0:
            return self.num_quant_resi or len(self.patch_nums)
        return self.share_quant_resi

    @classmethod
    def from_named(cls, name: str = "vae_ch160v4096z32", patch_nums: Sequence[int] = PATCH_NUMS_256, **kwargs):
        """The official tokenizer's configuration; `patch_nums` picks the 256px or 512px schedule."""
        if name not in NAMED_VQVAE_CONFIGS:
            raise ValueError(f"Unknown VQVAE name {name!r}; known: {sorted(NAMED_VQVAE_CONFIGS)}.")
        return cls(**{**NAMED_VQVAE_CONFIGS[name], "patch_nums": patch_nums, **kwargs})


# The released tokenizer: ch=160, 4096 codes of 32 dims, 4 partially shared phis (the reference's build_vae_var).
NAMED_VQVAE_CONFIGS = {
    "vae_ch160v4096z32": dict(
        base_channels=160, channel_multipliers=(1, 1, 2, 2, 4), num_res_blocks=2, vocab_size=4096,
        vq_embed_dim=32, share_quant_resi=4, quant_resi=0.5, using_znorm=False, beta=0.25,
    ),
}

# `AutoConfig.from_pretrained` on a saved VQVAE, once this module is imported (see also `auto_map` in
# `modeling_utils`, which works without importing var_hf first).
AutoConfig.register(MultiScaleVQVAEConfig.model_type, MultiScaleVQVAEConfig, exist_ok=True)

__all__ = ["MultiScaleVQVAEConfig", "NAMED_VQVAE_CONFIGS", "PATCH_NUMS_256", "PATCH_NUMS_512", "parse_patch_nums"]
