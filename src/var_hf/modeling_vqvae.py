"""The multi-scale residual VQVAE of VAR (arXiv 2404.02905, Sec. 3.2 and Algorithms 1-2).

An image goes through a VQGAN-style encoder to a latent `f` (B, vq_embed_dim, h, w). The quantizer then explains `f`
coarse to fine: at scale k it area-downsamples the residual to (pn_k, pn_k), picks the nearest code for every cell,
upsamples the chosen codes back to (h, w) with bicubic interpolation, passes them through a phi convolution and
subtracts them from the residual. The token maps of all scales come from one shared codebook; the sum of the phi
outputs, `f_hat`, is what the decoder turns back into an image.

The state-dict layout of the encoder and decoder is the reference's (the LDM/VQGAN layout); the quantizer's is
renamed (see `conversion/convert_var_to_hf.py` for the table).
"""

import contextlib
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoModel
from transformers import PreTrainedModel  # noqa: F401  (diffusers finds a component's loader by this module attribute)
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_vqvae import MultiScaleVQVAEConfig
from .modeling_utils import VARHFPreTrainedModel

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Encoder / decoder blocks (VQGAN / LDM layout: GroupNorm(32) + swish)
# ----------------------------------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class VQVAEResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        # A 1x1 projection only where the width changes; the reference stores no key otherwise.
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(hidden_states)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(hidden_states) + h


class VQVAEAttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, with a fused 1x1 qkv convolution.

    Written as explicit `bmm` + softmax + `bmm` on the same memory layouts as the reference, not as
    `scaled_dot_product_attention`: at the tokenizer's sizes (at most 32 x 32 positions) the cost is the same, and
    the images then match the reference's bit for bit in float32 and under autocast (an SDPA kernel rounds
    differently, up to 0.13 on random bf16-autocast weights)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        B, C, H, W = hidden_states.shape
        q_BCN, k_BCN, v_BCN = (
            t.reshape(B, C, H * W).contiguous()
            for t in self.qkv(self.norm(hidden_states)).reshape(B, 3, C, H, W).unbind(1)
        )
        weights_BNN = torch.bmm(q_BCN.transpose(1, 2).contiguous(), k_BCN).mul_(int(C) ** -0.5)
        weights_BNN = F.softmax(weights_BNN, dim=2)
        # out[b, c, j] = sum_i v[b, c, i] * weights[b, j, i]
        out_BCN = torch.bmm(v_BCN, weights_BNN.transpose(1, 2).contiguous())
        return hidden_states + self.proj_out(out_BCN.reshape(B, C, H, W).contiguous())


class VQVAEDownsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding (right and bottom only), as in VQGAN.
        return self.conv(F.pad(hidden_states, pad=(0, 1, 0, 1), mode="constant", value=0))


class VQVAEUpsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden_states, scale_factor=2, mode="nearest"))


class VQVAEMidBlock(nn.Module):
    def __init__(self, channels: int, dropout: float, use_attention: bool):
        super().__init__()
        self.block_1 = VQVAEResnetBlock(channels, channels, dropout)
        self.attn_1 = VQVAEAttnBlock(channels) if use_attention else nn.Identity()
        self.block_2 = VQVAEResnetBlock(channels, channels, dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(hidden_states)))


class VQVAELevel(nn.Module):
    """One resolution level: residual blocks, optional attention after each, optional resampling at the end."""

    def __init__(self, in_channels, out_channels, num_blocks, dropout, use_attention, resample: Optional[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        for _ in range(num_blocks):
            self.block.append(VQVAEResnetBlock(in_channels, out_channels, dropout))
            in_channels = out_channels
            if use_attention:
                self.attn.append(VQVAEAttnBlock(out_channels))
        if resample is not None:
            # The attribute name (`downsample` / `upsample`) is part of the state-dict layout.
            setattr(self, "downsample" if isinstance(resample, VQVAEDownsample) else "upsample", resample)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            hidden_states = block(hidden_states)
            if len(self.attn):
                hidden_states = self.attn[i](hidden_states)
        if hasattr(self, "downsample"):
            hidden_states = self.downsample(hidden_states)
        if hasattr(self, "upsample"):
            hidden_states = self.upsample(hidden_states)
        return hidden_states


class VQVAEEncoder(nn.Module):
    """(B, 3, H, W) -> (B, vq_embed_dim, H / f, W / f) with f = 2 ** (len(channel_multipliers) - 1)."""

    def __init__(self, config: MultiScaleVQVAEConfig):
        super().__init__()
        ch, mults = config.base_channels, config.channel_multipliers
        self.conv_in = nn.Conv2d(config.in_channels, ch, kernel_size=3, stride=1, padding=1)
        self.down = nn.ModuleList()
        in_mults = (1,) + tuple(mults)
        for level, mult in enumerate(mults):
            is_lowest = level == len(mults) - 1
            out_channels = ch * mult
            self.down.append(
                VQVAELevel(
                    ch * in_mults[level], out_channels, config.num_res_blocks, config.dropout,
                    use_attention=is_lowest and config.use_attention,
                    resample=None if is_lowest else VQVAEDownsample(out_channels),
                )
            )
        channels = ch * mults[-1]
        self.mid = VQVAEMidBlock(channels, config.dropout, config.use_mid_attention)
        self.norm_out = _group_norm(channels)
        self.conv_out = nn.Conv2d(channels, config.vq_embed_dim, kernel_size=3, stride=1, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(pixel_values)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VQVAEDecoder(nn.Module):
    """(B, vq_embed_dim, h, w) -> (B, 3, h * f, w * f). `up[0]` is the full-resolution level, as in the reference."""

    def __init__(self, config: MultiScaleVQVAEConfig):
        super().__init__()
        ch, mults = config.base_channels, config.channel_multipliers
        channels = ch * mults[-1]
        self.conv_in = nn.Conv2d(config.vq_embed_dim, channels, kernel_size=3, stride=1, padding=1)
        self.mid = VQVAEMidBlock(channels, config.dropout, config.use_mid_attention)
        levels = []
        for level in reversed(range(len(mults))):
            out_channels = ch * mults[level]
            levels.insert(
                0,
                VQVAELevel(
                    channels, out_channels, config.num_res_blocks + 1, config.dropout,
                    use_attention=level == len(mults) - 1 and config.use_attention,
                    resample=None if level == 0 else VQVAEUpsample(out_channels),
                ),
            )
            channels = out_channels
        self.up = nn.ModuleList(levels)
        self.norm_out = _group_norm(channels)
        self.conv_out = nn.Conv2d(channels, config.in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(latents))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------------------------------------------------
# Multi-scale residual quantizer
# ----------------------------------------------------------------------------------------------------------------------


class QuantResidualConv(nn.Conv2d):
    """phi_k of the paper: `h * (1 - r) + conv3x3(h) * r`, fixing the blur of upsampled coarse codes."""

    def __init__(self, channels: int, ratio: float):
        super().__init__(channels, channels, kernel_size=3, stride=1, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.ratio) + super().forward(h_BChw).mul_(self.ratio)


def phi_index_for_scale(scale_index: int, num_scales: int, num_phi: int) -> int:
    """Which of `num_phi` phi convolutions scale `scale_index` uses: the one whose tick is nearest to k / (K - 1).

    The reference spaces the ticks by 1/(3K) from the ends when K == 4 and by 1/(2K) otherwise.
    """
    if num_phi == 1:
        return 0
    margin = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
    ticks = np.linspace(margin, 1 - margin, num_phi)
    return int(np.argmin(np.abs(ticks - scale_index / (num_scales - 1))))


class MultiScaleQuantizer(nn.Module):
    def __init__(self, config: MultiScaleVQVAEConfig):
        super().__init__()
        self.vocab_size = config.vocab_size
        self.vq_embed_dim = config.vq_embed_dim
        self.using_znorm = config.using_znorm
        self.beta = config.beta
        self.patch_nums = tuple(config.patch_nums)
        self.codebook = nn.Embedding(config.vocab_size, config.vq_embed_dim)
        self.phi = nn.ModuleList(
            QuantResidualConv(config.vq_embed_dim, config.quant_resi) for _ in range(config.num_phi)
        )
        # Running per-scale code hits (the reference's `ema_vocab_hit_SV`), for the codebook-usage statistic.
        self.register_buffer("ema_code_hits", torch.zeros(len(self.patch_nums), config.vocab_size))
        self.register_buffer("num_hit_updates", torch.zeros((), dtype=torch.long))

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    def apply_phi(self, scale_index: int, h_BChw: torch.Tensor, num_scales: Optional[int] = None) -> torch.Tensor:
        """phi of scale `scale_index` of `num_scales` (default: the model's schedule); the phi is chosen by the scale's
        position k / (K - 1) in the schedule being run, so a custom encoding schedule picks by its own length."""
        if len(self.phi) == 0:
            return h_BChw
        num_scales = num_scales or self.num_scales
        return self.phi[phi_index_for_scale(scale_index, num_scales, len(self.phi))](h_BChw)

    def nearest_codes(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for every row (L2, or cosine when `using_znorm`)."""
        codes_VC = self.codebook.weight.detach()
        if self.using_znorm:
            return torch.argmax(F.normalize(z_NC, dim=-1) @ F.normalize(codes_VC.T, dim=0), dim=1)
        # |z|^2 + |e|^2 - 2 z.e, accumulated in this order so ties break as in the reference.
        dist_NV = torch.sum(z_NC.square(), dim=1, keepdim=True) + torch.sum(codes_VC.square(), dim=1)
        dist_NV.addmm_(z_NC, codes_VC.T, alpha=-2, beta=1)
        return torch.argmin(dist_NV, dim=1)

    def _scale_hw(self, patch_nums: Optional[Sequence]) -> List[Tuple[int, int]]:
        return [(pn, pn) if isinstance(pn, int) else (int(pn[0]), int(pn[1])) for pn in (patch_nums or self.patch_nums)]

    def _residual_scales(self, f_BChw: torch.Tensor, patch_nums: Optional[Sequence] = None, track_grad: bool = False):
        """Algorithm 1's loop. Yields (token indices (B, ph*pw), cumulative f_hat) per scale, coarse to fine.

        Without `track_grad` f_hat is one tensor updated in place (copy it to keep a scale's value); with it, f_hat
        is rebuilt out of place at every scale so gradients reach the codebook and phi (training)."""
        B, C, H, W = f_BChw.shape
        scale_hws = self._scale_hw(patch_nums)
        if len(scale_hws) < 2:
            raise ValueError(
                f"patch_nums must hold at least two scales (coarse to fine, the last one the latent size {(H, W)}), "
                f"got {list(patch_nums or self.patch_nums)}."
            )
        if scale_hws[-1] != (H, W):
            raise ValueError(
                f"The finest scale {scale_hws[-1]} must equal the latent size {(H, W)}: resize the images so the "
                f"latent is {scale_hws[-1]} (image side = finest scale x downsample factor) or pass matching patch_nums."
            )
        f_rest = f_BChw.detach().clone()
        f_hat = torch.zeros_like(f_rest)
        last = len(scale_hws) - 1
        for si, (ph, pw) in enumerate(scale_hws):
            rest_BChw = F.interpolate(f_rest, size=(ph, pw), mode="area") if si != last else f_rest
            idx_N = self.nearest_codes(rest_BChw.permute(0, 2, 3, 1).reshape(-1, C))
            h_BChw = self.codebook(idx_N.view(B, ph, pw)).permute(0, 3, 1, 2)
            if si != last:
                h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic")
            h_BChw = self.apply_phi(si, h_BChw.contiguous(), num_scales=len(scale_hws))
            if track_grad:
                f_hat = f_hat + h_BChw
                f_rest = f_rest - h_BChw.detach()
            else:
                f_hat.add_(h_BChw)
                f_rest.sub_(h_BChw)
            yield idx_N.reshape(B, ph * pw), f_hat

    @torch.no_grad()
    def latents_to_tokens(self, f_BChw: torch.Tensor, patch_nums: Optional[Sequence] = None) -> List[torch.Tensor]:
        with self._full_precision(f_BChw) as f_BChw:
            return [idx_Bl for idx_Bl, _ in self._residual_scales(f_BChw, patch_nums)]

    @torch.no_grad()
    def latents_to_fhats(self, f_BChw: torch.Tensor, patch_nums: Optional[Sequence] = None) -> List[torch.Tensor]:
        with self._full_precision(f_BChw) as f_BChw:
            return [f_hat.clone() for _, f_hat in self._residual_scales(f_BChw, patch_nums)]

    @contextlib.contextmanager
    def _full_precision(self, f_BChw: torch.Tensor):
        """Quantize in the codebook's dtype with autocast off, as the reference's quantizer means to (it turns
        autocast off; on a bf16 latent from an autocast encoder it then fails, which this cast avoids)."""
        with torch.autocast(device_type=f_BChw.device.type, enabled=False):
            yield f_BChw.to(self.codebook.weight.dtype)

    def tokens_to_embeddings(self, token_maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Token maps (B, pn*pn) -> code maps (B, C, pn, pn)."""
        out = []
        for idx_Bl in token_maps:
            pn = round(idx_Bl.shape[1] ** 0.5)
            out.append(self.codebook(idx_Bl).transpose(1, 2).reshape(idx_Bl.shape[0], self.vq_embed_dim, pn, pn))
        return out

    def embeddings_to_fhats(self, ms_h_BChw: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Cumulative f_hat after each scale (Algorithm 2), every one at the finest size."""
        B = ms_h_BChw[0].shape[0]
        H = W = self.patch_nums[-1]
        f_hat = ms_h_BChw[0].new_zeros(B, self.vq_embed_dim, H, W, dtype=torch.float32)
        fhats = []
        for si, h_BChw in enumerate(ms_h_BChw):
            if si < self.num_scales - 1:
                h_BChw = F.interpolate(h_BChw, size=(H, W), mode="bicubic")
            f_hat.add_(self.apply_phi(si, h_BChw))
            fhats.append(f_hat.clone())
        return fhats

    def teacher_forcing_input(self, token_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inputs of scales 2..K for training: f_hat after scale k, area-downsampled to scale k+1. (B, L - l_1, C)."""
        B = token_maps[0].shape[0]
        H = W = self.patch_nums[-1]
        f_hat = token_maps[0].new_zeros(B, self.vq_embed_dim, H, W, dtype=torch.float32)
        next_inputs = []
        for si in range(self.num_scales - 1):
            pn, pn_next = self.patch_nums[si], self.patch_nums[si + 1]
            h_BChw = self.codebook(token_maps[si]).transpose(1, 2).reshape(B, self.vq_embed_dim, pn, pn)
            f_hat.add_(self.apply_phi(si, F.interpolate(h_BChw, size=(H, W), mode="bicubic")))
            next_BCl = F.interpolate(f_hat, size=(pn_next, pn_next), mode="area").view(B, self.vq_embed_dim, -1)
            next_inputs.append(next_BCl.transpose(1, 2))
        return torch.cat(next_inputs, dim=1)

    def next_scale_input(
        self, scale_index: int, f_hat_BChw: torch.Tensor, h_BChw: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """One sampling step: add scale k's codes (B, C, pn_k, pn_k) to f_hat in place; return f_hat and the input
        of scale k+1, area-downsampled (B, C, pn_{k+1}, pn_{k+1}); after the last scale both are f_hat."""
        last = self.num_scales - 1
        if not torch.is_autocast_enabled(h_BChw.device.type):
            # Smoothed codes come in float32 even for a bf16 model. Under autocast they are left as they come (bf16
            # from the smoothing matmul), as in the reference, whose interpolation and phi then run in that dtype.
            h_BChw = h_BChw.to(self.codebook.weight.dtype)
        if scale_index != last:
            H = W = self.patch_nums[-1]
            f_hat_BChw.add_(self.apply_phi(scale_index, F.interpolate(h_BChw, size=(H, W), mode="bicubic")))
            pn_next = self.patch_nums[scale_index + 1]
            return f_hat_BChw, F.interpolate(f_hat_BChw, size=(pn_next, pn_next), mode="area")
        f_hat_BChw.add_(self.apply_phi(scale_index, h_BChw))
        return f_hat_BChw, f_hat_BChw

    def forward(self, f_BChw: torch.Tensor):
        """Training quantization: straight-through f_hat, VQ + commitment loss averaged over scales, code hits."""
        input_dtype = f_BChw.dtype
        f_BChw = f_BChw.float()
        f_no_grad = f_BChw.detach()
        vq_loss = f_BChw.new_zeros(())
        hits_SV = f_BChw.new_zeros(self.num_scales, self.vocab_size)
        with torch.autocast(device_type=f_BChw.device.type, enabled=False):
            for si, (idx_Bl, f_hat) in enumerate(self._residual_scales(f_BChw, track_grad=True)):
                hits_SV[si] = idx_Bl.flatten().bincount(minlength=self.vocab_size).float()
                # Commitment pulls the encoder to f_hat; the codebook term pulls codes (and phi) to the encoder. The
                # scale's two terms are summed before they join the total, in the reference's order of rounding.
                scale_loss = F.mse_loss(f_hat.detach(), f_BChw).mul(self.beta) + F.mse_loss(f_hat, f_no_grad)
                vq_loss = vq_loss + scale_loss
            vq_loss = vq_loss * (1.0 / self.num_scales)  # the reference multiplies by 1/K (not exact for K = 3)
            f_hat_st = (f_hat.detach() - f_no_grad) + f_BChw  # straight-through estimator
        if self.training:
            self._update_hits(hits_SV)
        return f_hat_st.to(input_dtype), vq_loss, hits_SV

    @torch.no_grad()
    def _update_hits(self, hits_SV: torch.Tensor):
        # Same schedule as the reference: copy, then EMA 0.9 for 100 updates, then 0.99.
        n = int(self.num_hit_updates)
        if n == 0:
            self.ema_code_hits.copy_(hits_SV)
        else:
            decay = 0.9 if n < 100 else 0.99
            self.ema_code_hits.mul_(decay).add_(hits_SV, alpha=1 - decay)
        self.num_hit_updates.add_(1)

    def codebook_usage(self, tokens_per_batch: int) -> torch.Tensor:
        """Percent of codes per scale whose running hit count reaches 8% of a uniform share (the reference's margin)."""
        margin = tokens_per_batch / self.vocab_size * 0.08
        return (self.ema_code_hits >= margin).float().mean(dim=1) * 100


# ----------------------------------------------------------------------------------------------------------------------
# Pretrained model
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class MultiScaleVQVAEOutput(ModelOutput):
    """
    Args:
        reconstruction (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
            Decoded images (not clamped, so the reconstruction loss keeps its gradient).
        vq_loss (`torch.FloatTensor`):
            VQ + commitment loss averaged over scales.
        code_hits (`torch.FloatTensor` of shape `(num_scales, vocab_size)`):
            How often each code was chosen at each scale in this batch.
        codebook_usage (`torch.FloatTensor` of shape `(num_scales,)`):
            Percent of codes in use per scale (running statistic, updated in training mode).
    """

    reconstruction: Optional[torch.FloatTensor] = None
    vq_loss: Optional[torch.FloatTensor] = None
    code_hits: Optional[torch.FloatTensor] = None
    codebook_usage: Optional[torch.FloatTensor] = None


class MultiScaleVQVAEPreTrainedModel(VARHFPreTrainedModel):
    config_class = MultiScaleVQVAEConfig
    base_model_prefix = "vqvae"
    main_input_name = "pixel_values"
    _no_split_modules = ["VQVAEResnetBlock", "VQVAEAttnBlock"]
    supports_gradient_checkpointing = False

    def likely_loading_cause(self, checkpoint_keys: set, expected_keys: set) -> Optional[str]:
        if any(key.startswith(("blocks.", "word_embed.", "head.")) for key in checkpoint_keys):
            return "the weights are a VARTransformer's (in a saved pipeline: the 'transformer/' folder, not 'vqvae/')"
        return None

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            # PyTorch's default conv init (the reference keeps it for the tokenizer).
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.weight[0].numel())
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # Codebook: uniform in +-1/V (the reference's `eini=-1`).
            bound = 1 / self.config.vocab_size
            init.uniform_(module.weight, -bound, bound)
        elif isinstance(module, MultiScaleQuantizer):
            init.zeros_(module.ema_code_hits)
            init.zeros_(module.num_hit_updates)


class MultiScaleVQVAE(MultiScaleVQVAEPreTrainedModel):
    r"""
    VAR's multi-scale residual VQVAE. Images are in [-1, 1], shaped (B, 3, H, W) with H = W =
    `config.image_size` (or any multiple of the downsample factor together with a matching `patch_nums`).

    Example:

    ```python
    >>> import torch
    >>> from var_hf import MultiScaleVQVAE, MultiScaleVQVAEConfig
    >>> vqvae = MultiScaleVQVAE(MultiScaleVQVAEConfig(base_channels=32, channel_multipliers=(1, 2), vocab_size=16,
    ...                                               vq_embed_dim=8, patch_nums=(1, 2, 4))).eval()
    >>> tokens = vqvae.encode_tokens(torch.rand(2, 3, 8, 8) * 2 - 1)
    >>> [t.shape for t in tokens]
    [torch.Size([2, 1]), torch.Size([2, 4]), torch.Size([2, 16])]
    >>> vqvae.decode_tokens(tokens).shape
    torch.Size([2, 3, 8, 8])

    ```
    """

    def __init__(self, config: MultiScaleVQVAEConfig):
        super().__init__(config)
        self.encoder = VQVAEEncoder(config)
        self.decoder = VQVAEDecoder(config)
        ks = config.quant_conv_kernel_size
        self.quant_conv = nn.Conv2d(config.vq_embed_dim, config.vq_embed_dim, ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(config.vq_embed_dim, config.vq_embed_dim, ks, stride=1, padding=ks // 2)
        self.quantizer = MultiScaleQuantizer(config)
        self.post_init()

    @property
    def patch_nums(self) -> Tuple[int, ...]:
        return self.quantizer.patch_nums

    def _check_pixels(self, pixel_values: torch.Tensor):
        if not torch.is_tensor(pixel_values) or pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.in_channels:
            shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
            raise ValueError(
                f"pixel_values must be a tensor of shape (batch, {self.config.in_channels}, height, width) in [-1, 1], "
                f"got {shape}."
            )

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> continuous latents f (B, vq_embed_dim, H/16, W/16) before quantization."""
        self._check_pixels(pixel_values)
        return self.quant_conv(self.encoder(pixel_values))

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Quantized latents f_hat (B, vq_embed_dim, h, w) -> images in [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat.to(self.post_quant_conv.weight.dtype))).clamp(-1, 1)

    @torch.no_grad()
    def encode_tokens(self, pixel_values: torch.Tensor, patch_nums: Optional[Sequence] = None) -> List[torch.Tensor]:
        """Images in [-1, 1] -> token maps, coarse to fine, each a LongTensor (B, h_k * w_k) in row-major order.

        Runs in the weights' dtype whatever the caller's autocast: codes are discrete, so a rounding can change one.
        The reference encodes in full precision too (its quantizer turns autocast off, and its editing notebook
        encodes outside autocast), so under autocast the tokens are still the reference's."""
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            return self.quantizer.latents_to_tokens(self.encode(pixel_values.to(self.quant_conv.weight.dtype)), patch_nums)

    @torch.no_grad()
    def decode_tokens(self, token_maps: Sequence[torch.Tensor], return_all_scales: bool = False):
        """Token maps (all scales, coarse to fine) -> images in [-1, 1].

        With `return_all_scales=True`, a list with the image decoded from the first k scales, for every k.
        """
        if len(token_maps) != self.quantizer.num_scales:
            raise ValueError(
                f"decode_tokens needs {self.quantizer.num_scales} token maps (one per scale of {self.patch_nums}), "
                f"got {len(token_maps)}."
            )
        for k, (idx_Bl, pn) in enumerate(zip(token_maps, self.patch_nums)):
            if idx_Bl.ndim != 2 or idx_Bl.shape[1] != pn * pn:
                raise ValueError(f"token map {k} must have shape (batch, {pn * pn}), got {tuple(idx_Bl.shape)}.")
        fhats = self.quantizer.embeddings_to_fhats(self.quantizer.tokens_to_embeddings(token_maps))
        if return_all_scales:
            return [self.decode(f_hat) for f_hat in fhats]
        return self.decode(fhats[-1])

    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode, quantize over all scales and decode (the reference's `img_to_reconstructed_img(last_one=True)`)."""
        return self.decode(self.quantizer.latents_to_fhats(self.encode(pixel_values))[-1])

    def teacher_forcing_input(self, token_maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The transformer's training input, (B, L - first_len, vq_embed_dim), from the ground-truth token maps."""
        return self.quantizer.teacher_forcing_input(token_maps)

    def next_scale_input(self, scale_index: int, f_hat: torch.Tensor, h_BChw: torch.Tensor):
        """Sampling step; see [`MultiScaleQuantizer.next_scale_input`]."""
        return self.quantizer.next_scale_input(scale_index, f_hat, h_BChw)

    def embed_tokens(self, idx_Bl: torch.Tensor) -> torch.Tensor:
        """Token indices (B, l) -> code vectors (B, l, vq_embed_dim)."""
        return self.quantizer.codebook(idx_Bl)

    def forward(self, pixel_values: torch.Tensor, return_dict: Optional[bool] = None):
        """Training pass: reconstruction with straight-through gradients, VQ loss and code statistics."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        f_hat, vq_loss, hits_SV = self.quantizer(self.encode(pixel_values))
        reconstruction = self.decoder(self.post_quant_conv(f_hat))
        usage = self.quantizer.codebook_usage(pixel_values.shape[0] * f_hat.shape[2] * f_hat.shape[3])
        if not return_dict:
            return reconstruction, vq_loss, hits_SV, usage
        return MultiScaleVQVAEOutput(reconstruction=reconstruction, vq_loss=vq_loss, code_hits=hits_SV, codebook_usage=usage)


# `AutoModel.from_pretrained` on a saved VQVAE, once this module is imported.
AutoModel.register(MultiScaleVQVAEConfig, MultiScaleVQVAE, exist_ok=True)

__all__ = ["MultiScaleVQVAE", "MultiScaleVQVAEPreTrainedModel", "MultiScaleVQVAEOutput", "MultiScaleQuantizer"]
