"""VARCollaborativePipeline: collaborative decoding (CoDe, arXiv 2411.17787) of VAR with two transformers that share
one tokenizer.

A large transformer, the *drafter*, samples the first, coarse scales 0..k-1; a small one, the *refiner*, samples the
fine scales k..K-1 (`draft_steps=k`). Each keeps its own KV cache. When the refiner takes over it first reads the
drafted prefix in one forward pass under the block-causal mask (its inputs are the same area-downsampled f_hat maps
the drafter read), which fills its cache exactly as running it scale by scale would; it then samples on, one scale
at a time. The fine scales hold most of the tokens (8 x 8 of the 130 positions of a 1..8 schedule; 16 x 16 of 680 for
ImageNet 256), so handing them to the small model saves most of the compute, at some cost in quality
(docs/sampling.md, "Collaborative decoding").

    for k in scheduler.timesteps (0..K-1):
        model = drafter if k < draft_steps else refiner          (refiner: prefix pass over scales 0..k-1 first)
        logits = model.forward_scale(x_k, cond, its kv_cache)
        tokens = scheduler.step(guided logits, k, generator); f_hat += phi_k(codes(tokens)); x_{k+1} from f_hat

`draft_steps=K` is the drafter alone and `draft_steps=0` the refiner alone: the same tokens as [`VARPipeline`] with
that transformer, for the same generator.
"""

import os
from typing import List, Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging

from var_hf.kv_cache import SamplingConstants, VARKVCache
from var_hf.modeling_var import VARTransformer
from var_hf.modeling_vqvae import MultiScaleVQVAE
from var_hf.pipeline_inputs import check_int
from var_hf.pipeline_loading import check_model_index, resolve_local_folder
from var_hf.pipelines.pipeline_var import VARPipeline
from var_hf.sampling_batching import BatchSample
from var_hf.scheduling_var import VARScaleScheduler

logger = logging.get_logger(__name__)

# Config fields the two transformers must share: they read and write the same token maps.
SHARED_FIELDS = ("vocab_size", "vq_embed_dim", "patch_nums", "num_classes")


def check_refiner_fits(transformer: VARTransformer, refiner: VARTransformer):
    """Raise a `ValueError` naming every field in which the refiner differs from the drafter (vocabulary, code
    dimension, patch schedule, classes)."""
    if not isinstance(refiner, VARTransformer):
        raise ValueError(f"refiner must be a VARTransformer, got {type(refiner).__name__}.")
    differ = [f"{name}: drafter {getattr(transformer.config, name)}, refiner {getattr(refiner.config, name)}"
              for name in SHARED_FIELDS
              if _as_list(getattr(transformer.config, name)) != _as_list(getattr(refiner.config, name))]
    if differ:
        raise ValueError(
            "The refiner cannot continue the drafter's token maps; they differ in " + "; ".join(differ) + ". Both "
            "transformers must be trained on the same VQVAE (vocabulary, code dimension, patch schedule) and classes."
        )


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def prefill_kv_cache(transformer: VARTransformer, scale_inputs: Sequence[torch.Tensor], constants: SamplingConstants,
                     kv_cache: Optional[VARKVCache] = None, return_logits: bool = False):
    """Run `transformer` once over the inputs of scales 0..k-1 (each (B, pn_i^2, C), from [`embed_first_scale`] and
    [`embed_next_scale`]) under the block-causal mask, filling `kv_cache` (a new pre-allocated one by default) as k
    calls of `forward_scale` would. Returns `(kv_cache, logits)`, logits (B, L_prefix, V) in float32 if
    `return_logits`, else None (sampling needs only the cache)."""
    kv_cache = kv_cache if kv_cache is not None else transformer.new_kv_cache()
    x_BLC = torch.cat(list(scale_inputs), dim=1)
    prefix_len = x_BLC.shape[1]
    mask_LL = transformer.block_causal_mask(x_BLC.device)[:prefix_len, :prefix_len]  # True: may attend
    for i, block in enumerate(transformer.blocks):
        x_BLC = block(x_BLC, constants.block_modulations[i], attention_mask=mask_LL, kv_cache=kv_cache,
                      attention_constants=(constants.qkv_biases[i], constants.query_scales[i]))
    logits = None
    if return_logits:
        logits = transformer.head(transformer.head_norm(x_BLC, constants.head_modulation).to(transformer.head.weight.dtype)).float()
    return kv_cache, logits


class VARCollaborativePipeline(VARPipeline):
    r"""
    Collaborative decoding (CoDe): a large `transformer` drafts the first `draft_steps` scales, a small `refiner`
    draws the rest. Everything else (labels, guidance, filtering, editing, batching, callbacks, outputs) is
    [`VARPipeline`]'s.

    Args:
        vqvae ([`MultiScaleVQVAE`]): the tokenizer both transformers were trained on.
        transformer ([`VARTransformer`]): the drafter (the large model).
        refiner ([`VARTransformer`]): the refiner (the small model); same vocabulary, code dimension, patch schedule
            and classes as the drafter.
        scheduler ([`VARScaleScheduler`]): patch schedule, guidance schedule and token sampling.
        id2label (`Dict[int, str]`, *optional*), sampling_defaults (`Dict[str, Any]`, *optional*): as in
            [`VARPipeline`].
        draft_steps (`int`, *optional*): the default number of drafted scales, saved with the pipeline. Defaults
            to all but the last two scales (CoDe's default split hands the refiner the last two of ten).

    Example:

    ```python
    >>> import torch
    >>> from var_hf import DEFAULT_MODEL, VARTransformer, VARTransformerConfig
    >>> from var_hf.pipelines.pipeline_var_collaborative import VARCollaborativePipeline
    >>> drafter = VARTransformerConfig.from_pretrained(DEFAULT_MODEL, subfolder="transformer")
    >>> small = VARTransformer(VARTransformerConfig(  # a refiner shares the drafter's tokenizer and classes
    ...     depth=2, embed_dim=32, num_heads=2, vocab_size=drafter.vocab_size, vq_embed_dim=drafter.vq_embed_dim,
    ...     num_classes=drafter.num_classes, patch_nums=drafter.patch_nums))
    >>> pipe = VARCollaborativePipeline.from_pretrained(DEFAULT_MODEL, refiner=small)
    >>> out = pipe(class_labels=["Sneaker", "Bag"], draft_steps=6, generator=torch.Generator().manual_seed(0))
    >>> out.images[0].size
    (32, 32)

    ```
    """

    _component_classes = {**VARPipeline._component_classes, "refiner": VARTransformer}

    def __init__(self, vqvae: MultiScaleVQVAE, transformer: VARTransformer, refiner: VARTransformer,
                 scheduler: VARScaleScheduler, id2label: Optional[dict] = None,
                 sampling_defaults: Optional[dict] = None, draft_steps: Optional[int] = None):
        check_refiner_fits(transformer, refiner)
        num_scales = len(transformer.config.patch_nums)
        if draft_steps is None:
            draft_steps = max(num_scales - 2, 0)
        check_int("draft_steps", draft_steps, minimum=0)
        if draft_steps > num_scales:
            raise ValueError(f"draft_steps must lie in [0, {num_scales}] (the number of scales), got {draft_steps}.")
        super().__init__(vqvae, transformer, scheduler, id2label=id2label, sampling_defaults=sampling_defaults)
        self.register_modules(refiner=refiner)
        self.register_to_config(draft_steps=draft_steps)
        self._call_draft_steps: Optional[int] = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], refiner=None, **kwargs):
        """Load the drafter's pipeline folder (a [`VARPipeline`] or a saved collaborative one) with `refiner`: a
        [`VARTransformer`], or a path to one (a transformer folder or a pipeline folder holding `transformer/`).
        Without `refiner` the folder must hold one (a saved `VARCollaborativePipeline`)."""
        path = resolve_local_folder(pretrained_model_name_or_path, kwargs)
        index = check_model_index(path, VARPipeline._component_classes)
        if refiner is None:
            if index is not None and "refiner" not in index:
                raise ValueError(f"{path} holds no refiner; pass refiner=<a VARTransformer or its folder>.")
            check_model_index(path, cls._component_classes)
        else:
            if isinstance(refiner, (str, os.PathLike)):
                refiner = load_refiner(refiner, kwargs.get("torch_dtype"))
            kwargs["refiner"] = refiner
        return DiffusionPipeline.from_pretrained.__func__(cls, path, **kwargs)

    @property
    def draft_steps(self) -> int:
        """The number of scales the drafter samples when `__call__` is not told."""
        return int(self.config.draft_steps)

    @torch.no_grad()
    def __call__(self, *args, draft_steps: Optional[int] = None, **kwargs):
        r"""
        [`VARPipeline.__call__`] (same arguments, same outputs) with the scales split between the two transformers.

        Args:
            draft_steps (`int`, *optional*, defaults to `pipe.draft_steps`):
                Scales 0..draft_steps-1 are sampled by the drafter (`transformer`), the rest by the `refiner`.
                `len(patch_nums)`: the drafter alone; 0: the refiner alone.
        """
        num_scales = len(self.scheduler.config.patch_nums)
        draft_steps = self.draft_steps if draft_steps is None else draft_steps
        check_int("draft_steps", draft_steps, minimum=0)
        if draft_steps > num_scales:
            raise ValueError(f"draft_steps must lie in [0, {num_scales}] (the number of scales), got {draft_steps}.")
        if kwargs.get("fast_path"):
            raise ValueError("fast_path is not available with collaborative decoding; call with fast_path=False.")
        self._call_draft_steps = draft_steps
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._call_draft_steps = None

    def _sample_batch(self, labels, settings, edit, fast: bool, callback_on_step_end, callback_on_step_end_tensor_inputs,
                      rows: slice, generator, sort_free: bool = False) -> BatchSample:
        """[`VARPipeline`]'s scale loop for the images `rows`, with the model switching from drafter to refiner at
        scale `draft_steps`."""
        vqvae, scheduler = self.vqvae, self.scheduler
        device, patch_nums = self._execution_device, scheduler.config.patch_nums
        draft_steps = self._call_draft_steps if self._call_draft_steps is not None else self.draft_steps
        labels_B = torch.tensor(labels[rows], device=device, dtype=torch.long)
        B, C = len(labels_B), vqvae.config.vq_embed_dim
        labels_2B = torch.cat((labels_B, torch.full_like(labels_B, self.transformer.config.null_class)))

        models = []  # (transformer, condition, constants, kv cache) of the drafter, then of the refiner
        for model, used in ((self.transformer, draft_steps > 0), (self.refiner, draft_steps < len(patch_nums))):
            cond_2BD = model.embed_class(labels_2B) if used else None
            models.append([model, cond_2BD, model.sampling_constants(cond_2BD) if used else None, None])
        f_hat = torch.zeros(B, C, patch_nums[-1], patch_nums[-1], device=device, dtype=torch.float32)
        token_maps, next_inputs = [], []  # next_inputs[i]: scale i+1's input (B, pn^2, C) from f_hat

        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            model, cond_2BD, constants, kv_cache = state = models[0 if i < draft_steps else 1]
            if kv_cache is None:  # first scale of this model: build its cache over the scales drafted so far
                if i == 0:
                    kv_cache = model.new_kv_cache()
                else:
                    prefix = [self._scale_input(model, cond_2BD, j, next_inputs) for j in range(i)]
                    kv_cache, _ = prefill_kv_cache(model, prefix, constants)
                state[3] = kv_cache
            x_2BlC = self._scale_input(model, cond_2BD, i, next_inputs)
            logits_2BlV = model.forward_scale(x_2BlC, cond_2BD, kv_cache, constants=constants)
            logits_BlV = scheduler.apply_guidance(logits_2BlV[:B], logits_2BlV[B:], i, settings.guidance_scale)
            step = scheduler.step(
                logits_BlV, i, generator=generator, top_k=settings.top_k, top_p=settings.top_p,
                temperature=settings.temperature_at(i), more_smooth=settings.more_smooth,
                codebook=vqvae.quantizer.codebook.weight,
            )
            f_hat, token_map, next_BlC = self._add_scale(  # as in VARPipeline: edit blend, f_hat, callback
                i, t, step, f_hat, settings.more_smooth, edit, rows, callback_on_step_end, callback_on_step_end_tensor_inputs
            )
            token_maps.append(token_map)
            if next_BlC is not None:
                next_inputs.append(next_BlC)
        return BatchSample(f_hat=f_hat, token_maps=token_maps)

    @staticmethod
    def _scale_input(model: VARTransformer, cond_2BD: torch.Tensor, i: int, next_inputs: List[torch.Tensor]):
        """`model`'s input of scale i for both guidance halves, (2B, pn_i^2, C)."""
        if i == 0:
            return model.embed_first_scale(cond_2BD)
        return model.embed_next_scale(i, next_inputs[i - 1]).repeat(2, 1, 1)


def load_refiner(path: Union[str, os.PathLike], torch_dtype: Optional[torch.dtype] = None) -> VARTransformer:
    """A [`VARTransformer`] from a transformer folder, or from the `transformer/` of a pipeline or training folder."""
    path = os.fspath(path)
    folder = os.path.join(path, "transformer") if os.path.isfile(os.path.join(path, "transformer", "config.json")) else path
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"No VARTransformer in {path} (expected config.json or transformer/config.json).")
    refiner = VARTransformer.from_pretrained(folder)
    return refiner.to(torch_dtype) if torch_dtype is not None else refiner


__all__ = ["VARCollaborativePipeline", "check_refiner_fits", "load_refiner", "prefill_kv_cache"]
