"""The VAR transformer: next-scale prediction with AdaLN class conditioning (arXiv 2404.02905, Sec. 3.1, 4).

The sequence is the concatenation of all token maps, coarse to fine (L = sum pn^2 tokens). Position t of scale k holds
the embedding of the *previous* scales' reconstruction, area-downsampled to scale k (the teacher-forcing input), plus
absolute position and level embeddings; the first scale holds the class embedding plus `pos_start`. A block-causal mask
lets every token see its own scale and all coarser ones, so the logits at scale k predict token map k.

During sampling each scale is one forward over that scale's tokens, attending to the keys and values cached from the
coarser scales ([`VARKVCache`]).
"""

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModel
from transformers import PreTrainedModel  # noqa: F401  (diffusers finds a component's loader by this module attribute)
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput, logging

from .configuration_var import VARTransformerConfig
from .kv_cache import SamplingConstants, VARKVCache
from .modeling_utils import (  # noqa: F401  (the checkpointing policy is re-exported for benchmarks)
    SELECTIVE_CHECKPOINT_SAVED_OPS,
    VARHFPreTrainedModel,
    _selective_checkpoint_policy,
    selective_checkpoint_context,
)

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------------------


# The pointwise-heavy pieces of a block, as functions of tensors only, so that `VARTransformer.compile_blocks` can hand
# them to torch.compile once for all blocks and scales (dynamic shapes, no module guards). Eager, they are exactly the
# operations the block would otherwise run inline.


def modulated_layer_norm(x_BLC: torch.Tensor, scale_B1C: torch.Tensor, shift_B1C: torch.Tensor, eps: float) -> torch.Tensor:
    """AdaLN: LayerNorm without affine parameters, then `x * (1 + scale) + shift`."""
    return F.layer_norm(x_BLC, (x_BLC.shape[-1],), eps=eps).mul(scale_B1C.add(1)).add_(shift_B1C)


def gated_update(update_BLC: torch.Tensor, gamma_B1C: torch.Tensor, keep_update_dtype: bool = False) -> torch.Tensor:
    """`update * gamma`. With `keep_update_dtype` the product is rounded to the update's dtype, as the reference's
    in-place `mul_` of the attention output does: under autocast with float32 gates (shared AdaLN) that is a
    bf16/fp16 rounding the images depend on. No-op when the dtypes agree."""
    gated_BLC = update_BLC.mul(gamma_B1C)
    return gated_BLC.to(update_BLC.dtype) if keep_update_dtype else gated_BLC


def gated_residual(
    x_BLC: torch.Tensor, update_BLC: torch.Tensor, gamma_B1C: torch.Tensor, keep_update_dtype: bool = False
) -> torch.Tensor:
    """`x + update * gamma` (see [`gated_update`])."""
    return x_BLC + gated_update(update_BLC, gamma_B1C, keep_update_dtype)


def mlp_forward(x_BLC, fc1_weight, fc1_bias, fc2_weight, fc2_bias) -> torch.Tensor:
    return F.linear(F.gelu(F.linear(x_BLC, fc1_weight, fc1_bias), approximate="tanh"), fc2_weight, fc2_bias)


@dataclass(frozen=True)
class BlockOps:
    """The functions a block calls for its pointwise pieces: eager by default, compiled after `compile_blocks`."""

    modulated_layer_norm: Callable = modulated_layer_norm
    gated_residual: Callable = gated_residual
    mlp: Callable = mlp_forward


EAGER_BLOCK_OPS = BlockOps()


class VARAttention(nn.Module):
    """Multi-head self-attention with q and v biases (k has none) and, optionally, L2-normalised q/k with a learned
    per-head temperature (the reference's `attn_l2_norm`)."""

    def __init__(self, config: VARTransformerConfig):
        super().__init__()
        self.embed_dim, self.num_heads = config.embed_dim, config.num_heads
        self.head_dim = config.embed_dim // config.num_heads
        self.attn_l2_norm = config.attn_l2_norm
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(self.embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(self.embed_dim))
        if self.attn_l2_norm:
            # log of the per-head multiplier of the cosine similarity; starts at 4, capped at 100.
            self.log_scale = nn.Parameter(torch.full((1, self.num_heads, 1, 1), math.log(4.0)))
            self.max_log_scale = math.log(100.0)
            self.scale = 1.0
        else:
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.attention_dropout = config.attention_dropout
        self.proj_drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def qkv_bias(self) -> torch.Tensor:
        """(3C,): q and v biases around a zero k bias."""
        return torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))

    def query_scale(self) -> Optional[torch.Tensor]:
        """(1, H, 1, 1) multiplier of the normalised queries (`attn_l2_norm`), else None."""
        return self.log_scale.clamp_max(self.max_log_scale).exp() if self.attn_l2_norm else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        kv_cache: Optional[VARKVCache] = None,
        layer_idx: int = 0,
        qkv_bias: Optional[torch.Tensor] = None,
        query_scale_1H11: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """`qkv_bias` and `query_scale_1H11` ([`qkv_bias`], [`query_scale`]) may be passed in precomputed: they
        depend on the weights only, so sampling computes them once per run."""
        B, L, C = hidden_states.shape
        qkv_bias = qkv_bias if qkv_bias is not None else self.qkv_bias()
        qkv_BL3Hc = F.linear(hidden_states, self.qkv.weight, qkv_bias).view(B, L, 3, self.num_heads, self.head_dim)
        q_BHLc, k_BHLc, v_BHLc = qkv_BL3Hc.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            query_scale_1H11 = query_scale_1H11 if query_scale_1H11 is not None else self.query_scale()
            q_BHLc = F.normalize(q_BHLc, dim=-1).mul(query_scale_1H11)
            k_BHLc = F.normalize(k_BHLc, dim=-1)
        if kv_cache is not None:
            k_BHLc, v_BHLc = kv_cache.update(layer_idx, k_BHLc, v_BHLc)
        out_BHLc = F.scaled_dot_product_attention(
            q_BHLc, k_BHLc, v_BHLc,
            attn_mask=attention_mask,
            dropout_p=self.attention_dropout if self.training else 0.0,
            scale=self.scale,
        )
        return self.proj_drop(self.proj(out_BHLc.transpose(1, 2).reshape(B, L, C)))


class VARMLP(nn.Module):
    def __init__(self, config: VARTransformerConfig):
        super().__init__()
        hidden = round(config.embed_dim * config.mlp_ratio)
        self.fc1 = nn.Linear(config.embed_dim, hidden)
        self.fc2 = nn.Linear(hidden, config.embed_dim)
        self.drop = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, mlp_fn: Optional[Callable] = None) -> torch.Tensor:
        """fc1, GELU (tanh), fc2 through `mlp_fn` (`mlp_forward`, or its compiled version), then dropout."""
        mlp_fn = mlp_fn or mlp_forward
        return self.drop(mlp_fn(hidden_states, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias))


class AdaLNModulation(nn.Module):
    """SiLU + Linear from the class condition (B, D) to `num_chunks` vectors (B, 1, num_chunks, C)."""

    def __init__(self, cond_dim: int, embed_dim: int, num_chunks: int):
        super().__init__()
        self.embed_dim, self.num_chunks = embed_dim, num_chunks
        self.linear = nn.Linear(cond_dim, num_chunks * embed_dim)

    def forward(self, cond_BD: torch.Tensor) -> torch.Tensor:
        return self.linear(F.silu(cond_BD)).view(-1, 1, self.num_chunks, self.embed_dim)


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm's rule, scaled by 1 / keep)."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class VARBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block whose LayerNorm scale/shift and residual gates come from the class (AdaLN)."""

    def __init__(self, config: VARTransformerConfig, layer_idx: int, drop_path_rate: float):
        super().__init__()
        self.layer_idx = layer_idx
        self.embed_dim = config.embed_dim
        self.drop_path_rate = drop_path_rate
        self.ln = nn.LayerNorm(config.embed_dim, eps=config.norm_eps, elementwise_affine=False)
        self.attn = VARAttention(config)
        self.mlp = VARMLP(config)
        self.shared_aln = config.shared_aln
        if self.shared_aln:
            # Added to the shared projection of the condition: (1, 1, 6, C).
            self.adaln_table = nn.Parameter(torch.zeros(1, 1, 6, config.embed_dim))
        else:
            self.adaln = AdaLNModulation(config.embed_dim, config.embed_dim, 6)
        self.ops = EAGER_BLOCK_OPS

    def _residual(
        self, x_BLC: torch.Tensor, update_BLC: torch.Tensor, gamma_B1C: torch.Tensor, keep_update_dtype: bool
    ) -> torch.Tensor:
        if self.training and self.drop_path_rate > 0:
            return x_BLC + drop_path(gated_update(update_BLC, gamma_B1C, keep_update_dtype), self.drop_path_rate, True)
        return self.ops.gated_residual(x_BLC, update_BLC, gamma_B1C, keep_update_dtype)

    def modulation(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """This block's AdaLN vectors (B, 1, 6, C): gamma1, gamma2, scale1, scale2, shift1, shift2. `cond_BD` is the
        class embedding (B, D), or with shared AdaLN the shared projection (B, 1, 6, C)."""
        return self.adaln_table + cond_BD if self.shared_aln else self.adaln(cond_BD)

    def forward(
        self,
        hidden_states: torch.Tensor,
        modulation_B16C: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        kv_cache: Optional[VARKVCache] = None,
        attention_constants: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
    ) -> torch.Tensor:
        """`modulation_B16C` from [`modulation`]: computed by the caller, so sampling computes it once per run
        rather than once per scale (the projection's weights are a third of the model). `attention_constants`:
        the attention's precomputed `(qkv_bias, query_scale)`, likewise."""
        gamma1, gamma2, scale1, scale2, shift1, shift2 = modulation_B16C.unbind(2)  # each (B, 1, C)
        attn_in = self.ops.modulated_layer_norm(hidden_states, scale1, shift1, self.ln.eps)
        qkv_bias, query_scale = attention_constants if attention_constants is not None else (None, None)
        attn_out = self.attn(
            attn_in, attention_mask=attention_mask, kv_cache=kv_cache, layer_idx=self.layer_idx,
            qkv_bias=qkv_bias, query_scale_1H11=query_scale,
        )
        # The reference gates the attention output in place (its dtype kept) and the MLP output out of place.
        hidden_states = self._residual(hidden_states, attn_out, gamma1, keep_update_dtype=True)
        mlp_out = self.mlp(self.ops.modulated_layer_norm(hidden_states, scale2, shift2, self.ln.eps), self.ops.mlp)
        return self._residual(hidden_states, mlp_out, gamma2, keep_update_dtype=False)


class AdaLNBeforeHead(nn.Module):
    def __init__(self, config: VARTransformerConfig):
        super().__init__()
        self.ln = nn.LayerNorm(config.embed_dim, eps=config.norm_eps, elementwise_affine=False)
        self.adaln = AdaLNModulation(config.embed_dim, config.embed_dim, 2)
        self.ops = EAGER_BLOCK_OPS

    def modulation(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Scale and shift (B, 1, 2, C) from the class embedding."""
        return self.adaln(cond_BD)

    def forward(self, hidden_states: torch.Tensor, modulation_B12C: torch.Tensor) -> torch.Tensor:
        scale, shift = modulation_B12C.unbind(2)
        return self.ops.modulated_layer_norm(hidden_states, scale, shift, self.ln.eps)


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained model
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class VARTransformerOutput(ModelOutput):
    """
    Args:
        loss (`torch.FloatTensor`, *optional*):
            Cross-entropy over all tokens (label smoothing from the config), when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, seq_len, vocab_size)`):
            Next-scale logits, in float32.
        hidden_states (`torch.FloatTensor` of shape `(batch_size, seq_len, embed_dim)`, *optional*):
            Output of the last block, when `output_hidden_states=True`.
    """

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    hidden_states: Optional[torch.FloatTensor] = None


class VARPreTrainedModel(VARHFPreTrainedModel):
    config_class = VARTransformerConfig
    base_model_prefix = "transformer"
    main_input_name = "class_labels"
    _no_split_modules = ["VARBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def likely_loading_cause(self, checkpoint_keys: set, expected_keys: set) -> Optional[str]:
        if any(key.startswith(("encoder.", "decoder.", "quantizer.")) for key in checkpoint_keys):
            return "the weights are a MultiScaleVQVAE's (in a saved pipeline: the 'vqvae/' folder, not 'transformer/')"
        saved_depth = len({key.split(".")[1] for key in checkpoint_keys if key.startswith("blocks.")})
        if saved_depth != self.config.depth:
            return f"the checkpoint holds {saved_depth} blocks but config.json says depth={self.config.depth}"
        return None

    def _std(self) -> float:
        return self.config.init_std if self.config.init_std >= 0 else math.sqrt(1 / self.config.embed_dim / 3)

    @torch.no_grad()
    def _init_weights(self, module):
        """The reference's `init_weights`: truncated normal everywhere, then the VAR-specific gains.

        `transformers.initialization` skips tensors that were loaded from a checkpoint, so only fresh weights move.
        """
        cfg, std = self.config, self._std()
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.trunc_normal_(module.weight, std=std)
        elif isinstance(module, VARAttention):
            init.zeros_(module.q_bias)
            init.zeros_(module.v_bias)
            if module.attn_l2_norm:
                init.constant_(module.log_scale, math.log(4.0))
        elif isinstance(module, VARTransformer):
            # Per-block gains live here: a block with per-block AdaLN has no parameters of its own, and transformers
            # skips such modules when initialising.
            for block in module.blocks:
                self._init_block(block)
            # Embedding parameters keep the reference's fixed std sqrt(1 / 3C), whatever init_std says.
            emb_std = math.sqrt(1 / cfg.embed_dim / 3)
            init.trunc_normal_(module.pos_start, std=emb_std)
            init.trunc_normal_(module.pos_embedding, std=emb_std)
            init.trunc_normal_(module.class_embedding.weight, std=emb_std)
            init.trunc_normal_(module.level_embedding.weight, std=emb_std)
            if cfg.init_head >= 0:
                init.trunc_normal_(module.head.weight, std=std * cfg.init_head)
                init.zeros_(module.head.bias)
            init.trunc_normal_(module.head_norm.adaln.linear.weight, std=std * cfg.init_adaln)
            init.zeros_(module.head_norm.adaln.linear.bias)

    @torch.no_grad()
    def _init_block(self, block: "VARBlock"):
        cfg, std = self.config, self._std()
        # Residual projections shrink with depth (GPT-2); gates start near zero so blocks start near identity.
        init.trunc_normal_(block.attn.proj.weight, std=std / math.sqrt(2 * cfg.depth))
        init.trunc_normal_(block.mlp.fc2.weight, std=std / math.sqrt(2 * cfg.depth))
        C = block.embed_dim
        if block.shared_aln:
            table = block.adaln_table
            if not getattr(table, "_is_hf_initialized", False):
                table.normal_(0, 1 / math.sqrt(C))
                table[:, :, 2:].mul_(cfg.init_adaln)
                table[:, :, :2].mul_(cfg.init_adaln_gamma)
        else:
            weight = block.adaln.linear.weight  # rows: gamma1, gamma2 | scale1, scale2, shift1, shift2
            if not getattr(weight, "_is_hf_initialized", False):
                nn.init.trunc_normal_(weight[: 2 * C], std=std * cfg.init_adaln_gamma)
                nn.init.trunc_normal_(weight[2 * C :], std=std * cfg.init_adaln)
            init.zeros_(block.adaln.linear.bias)


class VARTransformer(VARPreTrainedModel):
    r"""
    The VAR transformer. `forward` is the teacher-forced pass over all scales (training, evaluation); sampling goes
    scale by scale through [`embed_first_scale`], [`embed_next_scale`] and [`forward_scale`] with a [`VARKVCache`]
    (see `VARPipeline`).

    Example:

    ```python
    >>> import torch
    >>> from var_hf import VARTransformer, VARTransformerConfig
    >>> config = VARTransformerConfig(vocab_size=16, vq_embed_dim=8, num_classes=4, depth=2, embed_dim=32,
    ...                               num_heads=2, patch_nums=(1, 2, 3))
    >>> model = VARTransformer(config).eval()
    >>> out = model(torch.tensor([0, 3]), torch.randn(2, 13, 8), labels=torch.randint(0, 16, (2, 14)))
    >>> out.logits.shape, out.loss.ndim
    (torch.Size([2, 14, 16]), 0)

    ```
    """

    def __init__(self, config: VARTransformerConfig):
        super().__init__(config)
        C = config.embed_dim
        self.word_embed = nn.Linear(config.vq_embed_dim, C)
        self.class_embedding = nn.Embedding(config.num_classes + 1, C)
        self.pos_start = nn.Parameter(torch.zeros(1, config.first_len, C))
        self.pos_embedding = nn.Parameter(torch.zeros(1, config.seq_len, C))
        self.level_embedding = nn.Embedding(config.num_scales, C)
        self.shared_adaln = AdaLNModulation(C, C, 6) if config.shared_aln else None
        drop_path_rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(VARBlock(config, i, drop_path_rates[i]) for i in range(config.depth))
        self.head_norm = AdaLNBeforeHead(config)
        self.head = nn.Linear(C, config.vocab_size)
        self.post_init()

    # ------------------------------------------------------------------ helpers computed from the config
    # Level ids and the block-causal mask are derived on the fly (cheap, and nothing to restore after meta-device
    # loading); the reference kept them as buffers.

    def level_ids(self, device=None) -> torch.Tensor:
        """Scale index of every position, (L,)."""
        # Filled on the device: building it from a Python list would copy host-to-device and wait for the GPU queue.
        return torch.cat([
            torch.full((pn * pn,), k, dtype=torch.long, device=device) for k, pn in enumerate(self.config.patch_nums)
        ])

    def block_causal_mask(self, device=None) -> torch.Tensor:
        """(L, L) boolean, True where query i may attend to key j: j's scale <= i's scale."""
        level = self.level_ids(device)
        return level[:, None] >= level[None, :]

    def level_pos_embedding(self) -> torch.Tensor:
        """Level plus absolute position embedding, (1, L, C)."""
        return self.level_embedding(self.level_ids(self.pos_embedding.device))[None] + self.pos_embedding

    def _check_labels(self, class_labels: torch.Tensor):
        if not torch.is_tensor(class_labels) or class_labels.ndim != 1:
            raise ValueError(f"class_labels must be a 1-D LongTensor (batch,), got {getattr(class_labels, 'shape', class_labels)}.")
        # Value checks read the tensor back to the host; under torch.compile that would split the graph, so they are
        # left to eager runs (the shape check above always runs).
        if torch.compiler.is_compiling():
            return
        if class_labels.numel() and (int(class_labels.min()) < 0 or int(class_labels.max()) > self.config.num_classes):
            raise ValueError(
                f"class_labels must lie in [0, {self.config.num_classes}] ({self.config.num_classes} is the null "
                f"class), got values in [{int(class_labels.min())}, {int(class_labels.max())}]."
            )

    def embed_class(self, class_labels: torch.Tensor) -> torch.Tensor:
        """Class ids (B,) -> condition vectors (B, D); id `num_classes` is the null class."""
        return self.class_embedding(class_labels)

    def condition_for_blocks(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """What the blocks take as condition: the class vector, or with shared AdaLN its shared projection."""
        return self.shared_adaln(cond_BD) if self.shared_adaln is not None else cond_BD

    def compile_blocks(self, enabled: bool = True, **compile_kwargs) -> "VARTransformer":
        """Run the blocks' and the head's pointwise pieces (AdaLN LayerNorm, gated residuals, the MLP) through
        `torch.compile`, which fuses them into fewer kernels; attention and the KV cache stay eager, so the compiled
        pieces see no Python state and compile once (dynamic shapes) for every block and scale.

        Opt-in: fused kernels round differently, so logits move by float rounding (sampled tokens can then differ
        from the eager path's). Combines with the pipeline's fast path (the compiled kernels are captured in its
        CUDA graphs). `compile_blocks(False)` goes back to eager. `compile_kwargs` go to `torch.compile` (e.g.
        `mode="max-autotune-no-cudagraphs"`, or `backend="eager"` to check tracing without code generation).
        """
        if enabled:
            compile_kwargs = {"dynamic": True, **compile_kwargs}
            ops = BlockOps(*(torch.compile(fn, **compile_kwargs) for fn in (modulated_layer_norm, gated_residual, mlp_forward)))
        else:
            ops = EAGER_BLOCK_OPS
        for module in (*self.blocks, self.head_norm):
            module.ops = ops
        return self

    def enable_selective_checkpointing(self) -> "VARTransformer":
        """Activation checkpointing per block that keeps the matrix products' and attention's outputs and recomputes
        the pointwise work (see `SELECTIVE_CHECKPOINT_SAVED_OPS`): most of the memory saving of full checkpointing
        for a fraction of its extra compute; gradients are the same as without checkpointing. Undo with
        `activation_checkpointing_disable()`."""
        kwargs = {"use_reentrant": False, "context_fn": selective_checkpoint_context}
        if hasattr(self, "activation_checkpointing_enable"):  # transformers >= 5.2 naming
            self.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return self

    # ------------------------------------------------------------------ training / full-sequence pass

    def forward(
        self,
        class_labels: torch.LongTensor,
        teacher_forcing_input: torch.Tensor,
        labels: Optional[Union[torch.LongTensor, Sequence[torch.LongTensor]]] = None,
        output_hidden_states: bool = False,
        return_dict: Optional[bool] = None,
    ):
        r"""
        Args:
            class_labels (`torch.LongTensor` of shape `(batch_size,)`):
                Class ids; `num_classes` is the null class. In training mode each is replaced by the null class with
                probability `config.cond_drop_rate` (classifier-free guidance training).
            teacher_forcing_input (`torch.FloatTensor` of shape `(batch_size, seq_len - first_len, vq_embed_dim)`):
                From [`MultiScaleVQVAE.teacher_forcing_input`].
            labels (`torch.LongTensor` of shape `(batch_size, seq_len)` or a list of token maps, *optional*):
                Ground-truth tokens of all scales, concatenated coarse to fine.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        cfg = self.config
        self._check_labels(class_labels)
        B = class_labels.shape[0]
        expected = (B, cfg.seq_len - cfg.first_len, cfg.vq_embed_dim)
        if tuple(teacher_forcing_input.shape) != expected:
            raise ValueError(f"teacher_forcing_input must have shape {expected}, got {tuple(teacher_forcing_input.shape)}.")
        if self.training and cfg.cond_drop_rate > 0:
            drop = torch.rand(B, device=class_labels.device) < cfg.cond_drop_rate
            class_labels = torch.where(drop, cfg.null_class, class_labels)

        device_type = teacher_forcing_input.device.type
        # Mixed precision as in the reference's training forward: the inputs are built with autocast off, then the
        # residual stream runs in the autocast dtype (its `main_type`), unlike sampling, which keeps it in float32.
        # Same logits as the reference under autocast, and half the residual stream's activation memory.
        with torch.autocast(device_type=device_type, enabled=False):
            cond_BD = self.embed_class(class_labels)
            sos_BlC = cond_BD.unsqueeze(1).expand(B, cfg.first_len, -1) + self.pos_start.expand(B, -1, -1)
            words_BlC = self.word_embed(teacher_forcing_input.to(self.word_embed.weight.dtype))
            x_BLC = torch.cat((sos_BlC, words_BlC), dim=1)
            x_BLC = x_BLC + self.level_pos_embedding()

        mask_LL = self.block_causal_mask(x_BLC.device)
        block_cond = self.condition_for_blocks(cond_BD)
        if torch.is_autocast_enabled(device_type):
            main_dtype = torch.get_autocast_dtype(device_type)
            x_BLC, block_cond = x_BLC.to(main_dtype), block_cond.to(main_dtype)
        for block in self.blocks:
            x_BLC = block(x_BLC, block.modulation(block_cond), attention_mask=mask_LL)
        logits_BLV = self.logits(x_BLC.float(), cond_BD)

        loss = None
        if labels is not None:
            if not torch.is_tensor(labels):
                labels = torch.cat(list(labels), dim=1)
            if tuple(labels.shape) != (B, cfg.seq_len):
                raise ValueError(f"labels must have shape {(B, cfg.seq_len)}, got {tuple(labels.shape)}.")
            if not torch.compiler.is_compiling() and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= cfg.vocab_size):
                raise ValueError(
                    f"labels are token ids and must lie in [0, {cfg.vocab_size - 1}], got values in "
                    f"[{int(labels.min())}, {int(labels.max())}]."
                )
            loss = F.cross_entropy(
                logits_BLV.view(-1, cfg.vocab_size), labels.reshape(-1), label_smoothing=cfg.label_smoothing
            )
        hidden = x_BLC if output_hidden_states else None
        if not return_dict:
            return tuple(t for t in (loss, logits_BLV, hidden) if t is not None)
        return VARTransformerOutput(loss=loss, logits=logits_BLV, hidden_states=hidden)

    # ------------------------------------------------------------------ sampling, one scale at a time

    def new_kv_cache(self, preallocate: bool = True) -> VARKVCache:
        """A cache sized for one image's sequence (without the last scale, whose keys nothing reads)."""
        max_len = self.config.seq_len - self.config.patch_nums[-1] ** 2 if preallocate else None
        return VARKVCache(self.config.depth, max_len=max_len)

    def scale_level_pos_embedding(self, scale_index: int) -> torch.Tensor:
        """Level plus position embedding of one scale's positions, (1, pn*pn, C): the same sums as slicing
        [`level_pos_embedding`], without building index tensors in the sampling loop."""
        begin, end = self.config.scale_boundaries[scale_index]
        return self.level_embedding.weight[scale_index] + self.pos_embedding[:, begin:end]

    def embed_first_scale(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """Input of scale 0: class vector + pos_start + level/position embedding, (B, first_len, C)."""
        B, first = cond_BD.shape[0], self.config.first_len
        return (
            cond_BD.unsqueeze(1).expand(B, first, -1)
            + self.pos_start.expand(B, first, -1)
            + self.scale_level_pos_embedding(0)
        )

    def embed_next_scale(self, scale_index: int, next_input_BlC: torch.Tensor) -> torch.Tensor:
        """Input of scale `scale_index` (>= 1) from the area-downsampled f_hat (B, pn*pn, vq_embed_dim)."""
        words_BlC = self.word_embed(next_input_BlC.to(self.word_embed.weight.dtype))
        return words_BlC + self.scale_level_pos_embedding(scale_index)

    def sampling_constants(self, cond_BD: torch.Tensor) -> SamplingConstants:
        """The per-run constants of sampling for the class embedding `cond_BD` (B, D): every block's and the
        head's AdaLN vectors and the attentions' qkv biases and query scales. The same operations as inside a scale,
        so the same numbers."""
        block_cond = self.condition_for_blocks(cond_BD)
        return SamplingConstants(
            block_modulations=[block.modulation(block_cond) for block in self.blocks],
            head_modulation=self.head_norm.modulation(cond_BD),
            qkv_biases=[block.attn.qkv_bias() for block in self.blocks],
            query_scales=[block.attn.query_scale() for block in self.blocks],
        )

    def forward_scale(
        self,
        hidden_states: torch.Tensor,
        cond_BD: Optional[torch.Tensor],
        kv_cache: Optional[VARKVCache] = None,
        constants: Optional[SamplingConstants] = None,
        upcast: bool = True,
    ) -> torch.Tensor:
        """Logits (B, l, V) in float32 for one scale's tokens, attending to everything in `kv_cache` and appending
        this scale's keys/values to it. With `kv_cache=None` the tokens attend only to themselves. `constants`
        ([`sampling_constants`] of `cond_BD`) saves recomputing them at every scale; `cond_BD` is then not read.
        `upcast=False` leaves the logits in the head's dtype for a caller that upcasts them itself (copying into a
        float32 buffer)."""
        constants = constants if constants is not None else self.sampling_constants(cond_BD)
        x_BlC = hidden_states
        for i, block in enumerate(self.blocks):
            x_BlC = block(
                x_BlC, constants.block_modulations[i], attention_mask=None, kv_cache=kv_cache,
                attention_constants=(constants.qkv_biases[i], constants.query_scales[i]),
            )
        return self._head_logits(self.head_norm(x_BlC, constants.head_modulation), upcast=upcast)

    def logits(self, hidden_states: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        """AdaLN then the linear head; float32 logits whatever the model's dtype."""
        return self._head_logits(self.head_norm(hidden_states, self.head_norm.modulation(cond_BD)))

    def _head_logits(self, normed_BLC: torch.Tensor, upcast: bool = True) -> torch.Tensor:
        logits_BLV = self.head(normed_BLC.to(self.head.weight.dtype))
        return logits_BLV.float() if upcast else logits_BLV


# `AutoModel.from_pretrained` on a saved transformer, once this module is imported.
AutoModel.register(VARTransformerConfig, VARTransformer, exist_ok=True)

__all__ = ["SamplingConstants", "VARTransformer", "VARPreTrainedModel", "VARTransformerOutput", "VARKVCache"]
