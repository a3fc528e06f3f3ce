"""The scale scheduler: everything in VAR's sampling loop that is not a network.

VAR does not denoise; it samples one token map per scale, coarse to fine. The scheduler owns the patch schedule, the
classifier-free-guidance schedule over scales, and the turning of one scale's logits into tokens (top-k, top-p,
temperature, and the reference's Gumbel-softmax smoothing), consuming random numbers in the reference's order so that
a seeded `torch.Generator` reproduces the reference's samples.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput, logging

logger = logging.get_logger(__name__)

GUIDANCE_SCHEDULES = ("linear", "constant")


@dataclass
class VARSchedulerOutput(BaseOutput):
    """
    Args:
        token_map (`torch.LongTensor` of shape `(batch_size, pn * pn)`):
            Sampled code indices of this scale, row-major.
        smoothed_embeddings (`torch.FloatTensor` of shape `(batch_size, pn * pn, vq_embed_dim)`, *optional*):
            With `more_smooth=True`, the Gumbel-softmax mixture of code vectors the reference feeds forward instead
            of the hard codes (for visual quality; not used for FID).
        probabilities_valid (`torch.BoolTensor`, *optional*):
            With `sync_free=True`: a 0-d device tensor, False if any probability was inf or NaN (what
            `torch.multinomial` would have raised on), to be checked once after sampling.
        filter_exact (`torch.BoolTensor`, *optional*):
            With `sort_free=True`: a 0-d device tensor, False if more logits tied with the k-th largest than the
            sort-free filter's short list holds (its result is then not the sorting filter's; re-sample with
            `sort_free=False`).
    """

    token_map: torch.LongTensor
    smoothed_embeddings: Optional[torch.FloatTensor] = None
    probabilities_valid: Optional[torch.BoolTensor] = None
    filter_exact: Optional[torch.BoolTensor] = None


class VARScaleScheduler(SchedulerMixin, ConfigMixin):
    r"""
    Scale scheduler for [`VARPipeline`].

    Guidance follows the reference: at scale k of K, with `t_k = guidance_scale * w(k)`,
    `logits = (1 + t_k) * cond - t_k * uncond`. In diffusers' convention `uncond + w * (cond - uncond)` that is
    `w = 1 + t_k`; so `guidance_scale=1.5` is the reference's `cfg=1.5`, and `guidance_scale=0` disables guidance.

    Args:
        patch_nums (`List[int]`, *optional*, defaults to `[1, 2, 3, 4, 5, 6, 8, 10, 13, 16]`):
            Side of each token map, coarse to fine (must match the models').
        guidance_schedule (`str`, *optional*, defaults to `"linear"`):
            `"linear"`: `w(k) = k / (K - 1)`, the reference's ramp (no guidance at the first scale, full at the
            last); `"constant"`: `w(k) = 1`.
        smooth_tau_start (`float`, *optional*, defaults to 0.27):
            Gumbel-softmax temperature at the first scale when smoothing (MaskGIT's schedule, as in the reference).
        smooth_tau_decay (`float`, *optional*, defaults to 0.95):
            The temperature is `max(smooth_tau_start * (1 - smooth_tau_decay * k / (K - 1)), smooth_tau_min)`.
        smooth_tau_min (`float`, *optional*, defaults to 0.005):
            Lower bound of the smoothing temperature.

    Example:

    ```python
    >>> import torch
    >>> from var_hf import VARScaleScheduler
    >>> scheduler = VARScaleScheduler(patch_nums=[1, 2, 3])
    >>> scheduler.guidance_weight(scale_index=1, guidance_scale=4.0)  # linear ramp: 4 * 1 / (3 - 1)
    2.0
    >>> logits = scheduler.apply_guidance(torch.randn(2, 4, 16), torch.randn(2, 4, 16), 1, guidance_scale=4.0)
    >>> out = scheduler.step(logits, scale_index=1, generator=torch.Generator().manual_seed(0), top_k=5, top_p=0.9)
    >>> out.token_map.shape
    torch.Size([2, 4])

    ```
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        patch_nums: Sequence[int] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
        guidance_schedule: str = "linear",
        smooth_tau_start: float = 0.27,
        smooth_tau_decay: float = 0.95,
        smooth_tau_min: float = 0.005,
    ):
        if guidance_schedule not in GUIDANCE_SCHEDULES:
            raise ValueError(f"guidance_schedule must be one of {GUIDANCE_SCHEDULES}, got {guidance_schedule!r}.")
        if len(patch_nums) < 2:
            raise ValueError(f"patch_nums needs at least two scales, got {list(patch_nums)}.")
        self.timesteps = torch.arange(len(patch_nums))
        self.num_inference_steps = len(patch_nums)

    @property
    def num_scales(self) -> int:
        return len(self.config.patch_nums)

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: Union[str, torch.device] = None):
        """The 'timesteps' of VAR are its scales; their number is fixed by the patch schedule."""
        if num_inference_steps is not None and num_inference_steps != self.num_scales:
            raise ValueError(
                f"VAR samples exactly one step per scale ({self.num_scales} for patch_nums={list(self.config.patch_nums)}); "
                f"got num_inference_steps={num_inference_steps}."
            )
        self.timesteps = torch.arange(self.num_scales, device=device)
        self.num_inference_steps = self.num_scales

    def scale_ratio(self, scale_index: int) -> float:
        """k / (K - 1): 0 at the coarsest scale, 1 at the finest."""
        return scale_index / (self.num_scales - 1)

    def guidance_weight(self, scale_index: int, guidance_scale: float) -> float:
        """t_k of `(1 + t_k) * cond - t_k * uncond`."""
        if self.config.guidance_schedule == "constant":
            return guidance_scale
        return guidance_scale * self.scale_ratio(scale_index)

    def apply_guidance(
        self, logits_cond: torch.Tensor, logits_uncond: torch.Tensor, scale_index: int, guidance_scale: float
    ) -> torch.Tensor:
        t = self.guidance_weight(scale_index, guidance_scale)
        return (1 + t) * logits_cond - t * logits_uncond

    def smoothing_tau(self, scale_index: int) -> float:
        cfg = self.config
        return max(cfg.smooth_tau_start * (1 - self.scale_ratio(scale_index) * cfg.smooth_tau_decay), cfg.smooth_tau_min)

    @staticmethod
    def filter_logits(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
        """Mask (in place) all but the top-k logits, then all outside the top-p nucleus, with -inf.

        The same comparisons as the reference, so the surviving set is identical: top-k keeps logits >= the k-th
        largest; top-p drops the smallest tokens whose cumulative probability is <= 1 - top_p, never the largest.
        """
        V = logits_BlV.shape[-1]
        if top_k > 0:
            kth_largest = logits_BlV.topk(min(top_k, V), largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
            logits_BlV.masked_fill_(logits_BlV < kth_largest, -torch.inf)
        if top_p > 0:
            sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
            sorted_remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
            sorted_remove[..., -1:] = False
            logits_BlV.masked_fill_(sorted_remove.scatter(sorted_idx.ndim - 1, sorted_idx, sorted_remove), -torch.inf)
        return logits_BlV

    # Extra top-k entries taken beyond k, so that values tied with the k-th largest (all kept by top-k) are in the
    # short list too; bf16 logits tie in groups of 5-7 (up to 17 seen) around the 900th of 4096.
    SORT_FREE_TIE_SLACK = 128

    @classmethod
    def filter_logits_sort_free(
        cls, logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0, return_exact: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """[`filter_logits`] without sorting the vocabulary: one sorted top-k serves both filters.

        After top-k, the reference's ascending sort of the logits is `V - m` times -inf followed by the `m` survivors
        (the k largest and any values tied with the k-th) in ascending order. This rebuilds exactly that vector from
        the `k + SORT_FREE_TIE_SLACK` largest values, so the softmax, the cumulative sum and the number of tokens
        top-p removes are bit-identical. Top-p removes a prefix of that order: every token below the cut value, and
        of the tokens equal to it, as many as the prefix holds, lowest vocabulary index first, which is the order a
        stable sort gives them (PyTorch's CUDA sort of more than 128 entries is a stable radix sort; its CPU sort is
        not stable, so on CPU a tie exactly at the top-p cut may keep other tokens than [`filter_logits`]).

        If more tokens tie with the k-th value than the slack holds, the rebuilt vector is short and the result is not
        the reference's. That is detected on the device: with `return_exact=True` this returns `(logits, exact)`,
        `exact` a 0-d bool tensor to be checked after sampling (the pipeline then re-samples the batch with
        [`filter_logits`]). Without top-k there is no short list to sort, and without top-p nothing to sort: both fall
        back to [`filter_logits`].
        """
        V = logits_BlV.shape[-1]
        exact = torch.ones((), dtype=torch.bool, device=logits_BlV.device)
        if top_k <= 0 or top_k >= V or top_p <= 0:  # no top-p sort to avoid (or no short list): the sorting filter
            cls.filter_logits(logits_BlV, top_k=top_k, top_p=top_p)
            return (logits_BlV, exact) if return_exact else logits_BlV

        K = min(V, top_k + cls.SORT_FREE_TIE_SLACK)
        top_BlK = logits_BlV.topk(K, dim=-1, largest=True, sorted=True).values  # descending
        kth_largest_Bl1 = top_BlK[..., top_k - 1 : top_k]
        if K < V:  # the K-th value still tied with the k-th: survivors beyond the short list
            exact = (top_BlK[..., -1] < kth_largest_Bl1[..., 0]).all()
        ascending_BlK = top_BlK.flip(-1)
        ascending_BlK = ascending_BlK.masked_fill(ascending_BlK < kth_largest_Bl1, -torch.inf)  # removed by top-k
        ascending_BlV = torch.full_like(logits_BlV, -torch.inf)
        ascending_BlV[..., V - K :] = ascending_BlK
        remove_BlK = ascending_BlV.softmax(dim=-1).cumsum_(dim=-1)[..., V - K :] <= (1 - top_p)
        remove_BlK[..., -1:] = False
        num_removed_Bl1 = remove_BlK.sum(dim=-1, keepdim=True)
        cut_Bl1 = ascending_BlK.gather(-1, num_removed_Bl1)  # the smallest value top-p keeps
        # Of the tokens equal to the cut value, the prefix removed `ties_removed` (lowest vocabulary index first).
        ties_removed_Bl1 = ((ascending_BlK == cut_Bl1) & remove_BlK).sum(dim=-1, keepdim=True)
        at_cut_BlV = logits_BlV == cut_Bl1
        tie_rank_BlV = at_cut_BlV.cumsum(dim=-1, dtype=torch.int32)  # int32: half the memory of the default int64
        keep_BlV = (logits_BlV > cut_Bl1) | (at_cut_BlV & (tie_rank_BlV > ties_removed_Bl1))
        logits_BlV.masked_fill_(~keep_BlV, -torch.inf)
        return (logits_BlV, exact) if return_exact else logits_BlV

    @staticmethod
    def _draw_multinomial(probs_NV: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.LongTensor:
        return torch.multinomial(probs_NV, num_samples=1, replacement=True, generator=generator)

    @staticmethod
    def draw_sync_free(probs_NV: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.LongTensor:
        """`torch.multinomial(probs_NV, 1, replacement=True, generator=generator)` without its host synchronisations.

        For one sample PyTorch draws by the exponential race, `argmax(probs / Exp(1))`, with one exponential per
        entry. The same two ops here give the same indices and leave the generator in the same state (the tests check
        both against `torch.multinomial`), but skip multinomial's validity checks: three reductions per call, read on
        the host in older PyTorch (a stall of the GPU queue at every scale) and device-side asserts in newer ones (which
        end the CUDA context on failure). The pipeline checks once per run instead. Returns (N, 1)."""
        race_NV = torch.empty_like(probs_NV).exponential_(1, generator=generator)
        return probs_NV.div(race_NV).argmax(dim=-1, keepdim=True)

    def step(
        self,
        logits: torch.Tensor,
        scale_index: int,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        top_k: int = 0,
        top_p: float = 0.0,
        temperature: float = 1.0,
        more_smooth: bool = False,
        codebook: Optional[torch.Tensor] = None,
        sort_free: bool = False,
        sync_free: bool = False,
        return_dict: bool = True,
    ) -> Union[VARSchedulerOutput, tuple]:
        r"""
        Sample the token map of one scale.

        Args:
            logits (`torch.FloatTensor` of shape `(batch_size, pn * pn, vocab_size)`):
                Guided logits of this scale (see [`apply_guidance`]). Not modified.
            scale_index (`int`):
                Index k of the scale, 0 for the coarsest.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                One generator for the batch (consumed as the reference does: one multinomial draw over the whole
                batch, then, when smoothing, one exponential draw), or one per sample (each sample then equals what
                the same generator gives it alone).
            top_k (`int`, *optional*, defaults to 0):
                Keep the k most likely codes (0 disables).
            top_p (`float`, *optional*, defaults to 0.0):
                Nucleus sampling threshold (0 disables).
            temperature (`float`, *optional*, defaults to 1.0):
                Logits are divided by it before filtering (1 is the reference).
            more_smooth (`bool`, *optional*, defaults to `False`):
                Also return the Gumbel-softmax mixture of codes (needs `codebook`, (vocab_size, vq_embed_dim)).
            sort_free (`bool`, *optional*, defaults to `False`):
                Filter with [`filter_logits_sort_free`] (the fast path on CUDA): the tokens of a stable sort, as
                PyTorch's CUDA sort is; `filter_exact` reports the rare case it cannot rebuild.
            sync_free (`bool`, *optional*, defaults to `False`):
                Draw with [`draw_sync_free`] (the fast path): the same tokens; invalid probabilities are reported in
                `probabilities_valid` instead of raising here.
        """
        if logits.ndim != 3:
            raise ValueError(f"logits must be (batch, tokens, vocab), got shape {tuple(logits.shape)}.")
        B, l, V = logits.shape
        logits_BlV = logits.float() / temperature if temperature != 1.0 else logits.float().clone()
        filter_exact = None
        if sort_free:
            _, filter_exact = self.filter_logits_sort_free(logits_BlV, top_k=top_k, top_p=top_p, return_exact=True)
        else:
            self.filter_logits(logits_BlV, top_k=top_k, top_p=top_p)
        probs_NV = logits_BlV.softmax(dim=-1).view(-1, V)
        draw = self.draw_sync_free if sync_free else self._draw_multinomial
        if isinstance(generator, (list, tuple)):
            if len(generator) != B:
                raise ValueError(f"Got {len(generator)} generators for a batch of {B}.")
            token_map = torch.cat([draw(probs_NV[i * l : (i + 1) * l], g) for i, g in enumerate(generator)]).view(B, l)
        else:
            token_map = draw(probs_NV, generator).view(B, l)
        # A NaN or inf probability makes its row's sum non-finite: one reduction instead of elementwise checks.
        probabilities_valid = torch.isfinite(probs_NV.sum(dim=-1)).all() if sync_free else None

        smoothed = None
        if more_smooth:
            if codebook is None:
                raise ValueError("more_smooth=True needs the codebook (vocab_size, vq_embed_dim).")
            # Gumbel-softmax on the filtered logits sharpened by (1 + k/(K-1)), as the reference's gumbel_softmax_with_rng.
            scaled_BlV = logits_BlV.mul(1 + self.scale_ratio(scale_index))
            if isinstance(generator, (list, tuple)):
                exp_BlV = torch.stack([torch.empty_like(scaled_BlV[i]).exponential_(generator=g) for i, g in enumerate(generator)])
            else:
                exp_BlV = torch.empty_like(scaled_BlV).exponential_(generator=generator)
            soft_BlV = ((scaled_BlV - exp_BlV.log()) / self.smoothing_tau(scale_index)).softmax(dim=-1)
            smoothed = soft_BlV @ codebook.float().unsqueeze(0)

        if not return_dict:
            return (token_map, smoothed)
        return VARSchedulerOutput(
            token_map=token_map, smoothed_embeddings=smoothed, probabilities_valid=probabilities_valid,
            filter_exact=filter_exact,
        )


__all__ = ["VARScaleScheduler", "VARSchedulerOutput", "GUIDANCE_SCHEDULES"]
