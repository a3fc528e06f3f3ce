"""Configuration of the VAR transformer (next-scale prediction)."""

from typing import Optional, Sequence

from transformers import AutoConfig
from transformers.utils import logging

from .configuration_utils import ConfigFieldError, VARHFConfig, check_bool, check_float, check_int, check_patch_nums
from .configuration_vqvae import PATCH_NUMS_256, PATCH_NUMS_512

logger = logging.get_logger(__name__)


class VARTransformerConfig(VARHFConfig):
    r"""
    Configuration of [`VARTransformer`], the GPT-2-like decoder with AdaLN class conditioning that predicts every token
    map from all coarser ones.

    Args:
        vocab_size (`int`, *optional*, defaults to 4096):
            Codebook size of the paired VQVAE (the head's output size).
        vq_embed_dim (`int`, *optional*, defaults to 32):
            Code dimension of the paired VQVAE (the input of `word_embed`).
        num_classes (`int`, *optional*, defaults to 1000):
            Number of classes. The class embedding has `num_classes + 1` rows; the last is the null class used for
            classifier-free guidance and class dropout.
        depth (`int`, *optional*, defaults to 16):
            Number of transformer blocks.
        embed_dim (`int`, *optional*):
            Hidden width; defaults to the reference's rule `64 * depth`.
        num_heads (`int`, *optional*):
            Attention heads; defaults to the reference's rule `depth`.
        mlp_ratio (`float`, *optional*, defaults to 4.0):
            MLP hidden width over `embed_dim`.
        dropout (`float`, *optional*, defaults to 0.0):
            Dropout after the attention projection and the MLP.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities.
        drop_path_rate (`float`, *optional*):
            Stochastic depth at the last block (linearly increasing from 0); defaults to the reference's
            `0.1 * depth / 24`.
        norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of the (affine-free) LayerNorms.
        shared_aln (`bool`, *optional*, defaults to `False`):
            One AdaLN projection shared by all blocks plus a learned per-block table (the 512px d36 model).
        attn_l2_norm (`bool`, *optional*, defaults to `True`):
            L2-normalise q and k and scale q by a learned per-head factor (clamped at 100); otherwise plain attention
            with the reference's scale `0.25 / sqrt(head_dim)`.
        cond_drop_rate (`float`, *optional*, defaults to 0.1):
            Probability of replacing a label by the null class during training.
        label_smoothing (`float`, *optional*, defaults to 0.0):
            Label smoothing of the training cross-entropy.
        patch_nums (`Sequence[int]`, *optional*, defaults to `(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)`):
            Side of each token map, coarse to fine; must equal the VQVAE's.
        init_adaln (`float`, *optional*, defaults to 0.5):
            Gain on the AdaLN scale/shift rows at initialisation.
        init_adaln_gamma (`float`, *optional*, defaults to 1e-5):
            Gain on the AdaLN residual-gate (gamma) rows at initialisation.
        init_head (`float`, *optional*, defaults to 0.02):
            Gain on the head weights at initialisation.
        init_std (`float`, *optional*, defaults to -1):
            Std of the truncated-normal init; negative means the reference's `sqrt(1 / embed_dim / 3)`.
        id2label (`dict`, *optional*):
            Class names, stored with the model.

    Example:

    ```python
    >>> from var_hf import VARTransformer, VARTransformerConfig
    >>> config = VARTransformerConfig(vocab_size=16, vq_embed_dim=8, num_classes=4, depth=2, embed_dim=32,
    ...                               num_heads=2, patch_nums=(1, 2, 3))
    >>> VARTransformer(config).config.seq_len
    14

    ```
    """

    model_type = "var_transformer"

    def __init__(
        self,
        vocab_size: int = 4096,
        vq_embed_dim: int = 32,
        num_classes: int = 1000,
        depth: int = 16,
        embed_dim: Optional[int] = None,
        num_heads: Optional[int] = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path_rate: Optional[float] = None,
        norm_eps: float = 1e-6,
        shared_aln: bool = False,
        attn_l2_norm: bool = True,
        cond_drop_rate: float = 0.1,
        label_smoothing: float = 0.0,
        patch_nums: Sequence[int] = PATCH_NUMS_256,
        init_adaln: float = 0.5,
        init_adaln_gamma: float = 1e-5,
        init_head: float = 0.02,
        init_std: float = -1.0,
        **kwargs,
    ):
        # The derived defaults below compute with `depth`: check it first.
        check_int("depth", depth, minimum=1)
        self.vocab_size = vocab_size
        self.vq_embed_dim = vq_embed_dim
        self.num_classes = num_classes
        self.depth = depth
        self.embed_dim = embed_dim if embed_dim is not None else 64 * depth
        self.num_heads = num_heads if num_heads is not None else depth
        self.mlp_ratio = mlp_ratio
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.drop_path_rate = drop_path_rate if drop_path_rate is not None else 0.1 * depth / 24
        self.norm_eps = norm_eps
        self.shared_aln = shared_aln
        self.attn_l2_norm = attn_l2_norm
        self.cond_drop_rate = cond_drop_rate
        self.label_smoothing = label_smoothing
        self.patch_nums = list(patch_nums) if isinstance(patch_nums, (list, tuple)) else patch_nums
        self.init_adaln = init_adaln
        self.init_adaln_gamma = init_adaln_gamma
        self.init_head = init_head
        self.init_std = init_std
        super().__init__(**kwargs)
        self.check_fields()

    def check_fields(self):
        """Types and ranges of every field, each error naming its field (see `configuration_utils`)."""
        check_int("vocab_size", self.vocab_size, minimum=2)
        check_int("vq_embed_dim", self.vq_embed_dim, minimum=1)
        check_int("num_classes", self.num_classes, minimum=1)
        check_int("depth", self.depth, minimum=1)
        check_int("embed_dim", self.embed_dim, minimum=1)
        check_int("num_heads", self.num_heads, minimum=1)
        if self.embed_dim % self.num_heads:
            raise ConfigFieldError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads}).")
        check_float("mlp_ratio", self.mlp_ratio, minimum=0, exclusive_minimum=True)
        for name in ("dropout", "attention_dropout", "drop_path_rate", "label_smoothing"):
            check_float(name, getattr(self, name), minimum=0, maximum=1, exclusive_maximum=True)
        check_float("cond_drop_rate", self.cond_drop_rate, minimum=0, maximum=1)
        check_float("norm_eps", self.norm_eps, minimum=0, exclusive_minimum=True)
        check_bool("shared_aln", self.shared_aln)
        check_bool("attn_l2_norm", self.attn_l2_norm)
        self.patch_nums = check_patch_nums(self.patch_nums)
        for name in ("init_adaln", "init_adaln_gamma", "init_head", "init_std"):
            check_float(name, getattr(self, name))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def seq_len(self) -> int:
        """Total number of tokens over all scales (680 for the 256px schedule)."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def first_len(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def null_class(self) -> int:
        """Row of the class embedding used for unconditional logits and class dropout."""
        return self.num_classes

    @property
    def scale_boundaries(self):
        """(begin, end) token offsets of every scale in the flattened sequence."""
        bounds, cur = [], 0
        for pn in self.patch_nums:
            bounds.append((cur, cur + pn * pn))
            cur += pn * pn
        return bounds

    @classmethod
    def from_named(cls, name: str, **kwargs):
        """An official VAR configuration: `var_d16`, `var_d20`, `var_d24`, `var_d30` (256px) or `var_d36` (512px)."""
        if name not in NAMED_VAR_CONFIGS:
            raise ValueError(f"Unknown VAR name {name!r}; known: {sorted(NAMED_VAR_CONFIGS)}.")
        return cls(**{**NAMED_VAR_CONFIGS[name], **kwargs})


# The released models: width 64 * depth, heads = depth, dpr 0.1 * depth / 24, L2-normalised attention.
NAMED_VAR_CONFIGS = {
    **{
        f"var_d{depth}": dict(depth=depth, shared_aln=False, attn_l2_norm=True, patch_nums=PATCH_NUMS_256)
        for depth in (16, 20, 24, 30)
    },
    "var_d36": dict(depth=36, shared_aln=True, attn_l2_norm=True, patch_nums=PATCH_NUMS_512),
}

# `AutoConfig.from_pretrained` on a saved transformer, once this module is imported (see also `auto_map` in
# `modeling_utils`, which works without importing var_hf first).
AutoConfig.register(VARTransformerConfig.model_type, VARTransformerConfig, exist_ok=True)

__all__ = ["VARTransformerConfig", "NAMED_VAR_CONFIGS"]
