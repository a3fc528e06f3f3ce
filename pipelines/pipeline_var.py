"""VARPipeline: class-conditional image generation by next-scale prediction, and zero-shot editing.

Components (diffusers `register_modules`): `vqvae` ([`MultiScaleVQVAE`]), `transformer` ([`VARTransformer`]) and
`scheduler` ([`VARScaleScheduler`]). For K scales, `__call__` runs:

    cond = class embedding of [labels; null class]            (2B, D): conditional and unconditional halves
    x = first-scale input; f_hat = 0                           (B, vq_embed_dim, pn_K, pn_K)
    for k in scheduler.timesteps (0..K-1):
        logits = transformer.forward_scale(x, cond, kv_cache)  (2B, pn_k^2, V), appends keys/values to the cache
        tokens = scheduler.step(guided logits, k, generator)   (B, pn_k^2)
        f_hat += phi_k(upsample(codes(tokens)))                 then callback_on_step_end(f_hat) may replace it
        x = embed(area-downsample(f_hat) to pn_{k+1})
    image = vqvae.decode(f_hat)

Labels and saved defaults, argument checks, editing inputs, devices and decoding are the mixins of
`var_hf.pipeline_mixins`; loading and saving is `var_hf.pipeline_loading`. This file imports the package absolutely,
so diffusers can also load it as a custom pipeline
(`DiffusionPipeline.from_pretrained(path, custom_pipeline="pipeline_var.py", trust_remote_code=True)`).
"""

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging

from var_hf.fast_sampling import StaticScaleRunners, sort_free_filter_matches_reference
from var_hf.labels import LabelMap, default_id2label
from var_hf.modeling_var import VARTransformer
from var_hf.modeling_vqvae import MultiScaleVQVAE
from var_hf.pipeline_inputs import SamplingSettings, check_returned_f_hat
from var_hf.pipeline_loading import VARPipelineLoadingMixin, check_components
from var_hf.pipeline_mixins import LabelLike, VARDevicesMixin, VARInputsMixin, VARLabelsMixin
from var_hf.sampling_batching import DECODE_BATCH_SIZE, BatchSample, rows_at_once, sample_in_batches
from var_hf.scheduling_var import VARScaleScheduler

logger = logging.get_logger(__name__)


@dataclass
class VARPipelineOutput(BaseOutput):
    """
    Args:
        images (`List[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            Images in [0, 1] (`pil`, `np` (B, H, W, 3), `pt` (B, 3, H, W)), or the final `f_hat` (B, vq_embed_dim, h, w)
            for `output_type="latent"`.
        token_maps (`List[torch.LongTensor]`): the sampled token maps, coarse to fine, each (B, pn * pn).
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    token_maps: List[torch.LongTensor]


class VARPipeline(VARPipelineLoadingMixin, VARLabelsMixin, VARInputsMixin, VARDevicesMixin, DiffusionPipeline):
    r"""
    Class-conditional generation with VAR (Visual AutoRegressive modeling), plus zero-shot inpainting, outpainting and
    class-conditional editing.

    Args:
        vqvae ([`MultiScaleVQVAE`]): tokenizer/decoder.
        transformer ([`VARTransformer`]): next-scale predictor.
        scheduler ([`VARScaleScheduler`]): patch schedule, guidance schedule and token sampling.
        id2label (`Dict[int, str]`, *optional*): class names (default: the transformer config's, or ImageNet's).
        sampling_defaults (`Dict[str, Any]`, *optional*): the model's recommended [`SamplingSettings`], used for
            every setting a call leaves out; defaults to the reference's. Both are saved in `model_index.json`.

    Example:

    ```python
    >>> import torch
    >>> from var_hf import VARPipeline, DEFAULT_MODEL
    >>> pipe = VARPipeline.from_pretrained(DEFAULT_MODEL)
    >>> out = pipe(class_labels=["Sneaker", "Bag"], generator=torch.Generator().manual_seed(0))
    >>> out.images[0].size
    (32, 32)

    ```
    """

    _callback_tensor_inputs = ["f_hat", "token_map", "image_estimate"]
    _component_classes = {"vqvae": MultiScaleVQVAE, "transformer": VARTransformer, "scheduler": VARScaleScheduler}

    def __init__(self, vqvae: MultiScaleVQVAE, transformer: VARTransformer, scheduler: VARScaleScheduler,
                 id2label: Optional[dict] = None, sampling_defaults: Optional[dict] = None):
        super().__init__()
        check_components(dict(vqvae=vqvae, transformer=transformer, scheduler=scheduler), self._component_classes)
        self.register_modules(vqvae=vqvae, transformer=transformer, scheduler=scheduler)
        id2label = {int(k): str(v) for k, v in (id2label or default_id2label(transformer.config)).items()}
        defaults = SamplingSettings.from_dict(sampling_defaults or {}).check_num_scales(scheduler.config.patch_nums)
        self.register_to_config(id2label={str(k): v for k, v in id2label.items()}, sampling_defaults=defaults.to_dict())
        self.label_map = LabelMap(id2label, transformer.config.num_classes)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=True, do_normalize=True)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=1, do_resize=True, do_normalize=False, do_binarize=False, do_convert_grayscale=True
        )
        self._runners = StaticScaleRunners()  # the fast path's static caches and CUDA graphs, kept between calls
        # Images decoded per decoder call (None: a whole batch at once, as the reference does).
        self.decode_batch_size: Optional[int] = DECODE_BATCH_SIZE

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        class_labels: LabelLike = None,
        guidance_scale: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        temperature: Optional[Union[float, Sequence[float]]] = None,
        more_smooth: Optional[bool] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        num_images_per_label: int = 1,
        image=None,
        mask_image=None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["VARPipeline", int, int, Dict[str, Any]], Dict[str, Any]]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("image_estimate",),
        fast_path: bool = False,
        max_batch_size: Optional[int] = None,
    ) -> Union[VARPipelineOutput, tuple]:
        r"""
        Generate (or edit) images. Sampling settings left as `None` take the pipeline's `sampling_defaults` (the
        reference's cfg 4, top-k 900, top-p 0.95, temperature 1 unless the saved pipeline recommends others).

        Args:
            class_labels (`int`, `str`, `None`, a list of them, or a 1-d integer tensor / array):
                Class ids, names (`pipe.labels`), or `None` for unconditional samples (the null class).
            guidance_scale (`float`, *optional*): the reference's `cfg`: at scale k, `(1 + t_k) cond - t_k uncond`
                with `t_k = guidance_scale * k / (K - 1)`. 0 disables guidance.
            top_k (`int`, *optional*): keep the k most likely codes (0 disables).
            top_p (`float`, *optional*): nucleus threshold in [0, 1] (0 disables).
            temperature (`float` or a list of `float`, *optional*): softmax temperature (> 0), or one per scale,
                coarse to fine (e.g. above 1 on the first few scales only: more varied shapes, the same fine detail).
            more_smooth (`bool`, *optional*): the reference's Gumbel-softmax smoothing (visual quality, not FID).
            generator (`torch.Generator` or a list, *optional*): one for the batch (seeded like the reference's
                `g_seed` it reproduces its samples on the same device) or one per image, on the pipeline's device.
            num_images_per_label (`int`, *optional*, defaults to 1): images per label, labels repeated in place.
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list, *optional*): image(s) to edit, resized
                and centre-cropped to the model's resolution; float values in [0, 1], `uint8` in [0, 255]
                (`np.array(pil_image)` is `pil_image`); a 4-D tensor/array is a batch. Needs `mask_image`.
            mask_image (image-like, a list, or a box `(y0, x0, y1, x1)` in [0, 1], *optional*): white = regenerate,
                black = keep; kept tokens are forced from the image's own token maps at every scale.
            output_type (`str`, *optional*, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"` (final f_hat).
            return_dict (`bool`, *optional*, defaults to `True`): else return `(images, token_maps)`.
            callback_on_step_end (`Callable`, *optional*): called after each scale as `callback(pipe, step_index,
                timestep, callback_kwargs)` with the tensors named in `callback_on_step_end_tensor_inputs`
                (`image_estimate`: the image decoded so far, (B, 3, H, W) in [0, 1]; `f_hat`; `token_map`). A returned
                `{"f_hat": ...}` (same shape, dtype, device) replaces f_hat, and so the next scale's input.
            fast_path (`bool`, *optional*, defaults to `False`): experimental CUDA graphs and sort-free filtering
                (`docs/performance.md`); verify it on your GPU with `benchmarks/gpu_session.sh`.
            max_batch_size (`int`, *optional*): images sampled at once. `None`: on CUDA what the free memory should
                hold (retried at half the size from rewound generators if it runs out), else all.
        """
        # 1. Check inputs, before any model work.
        labels = self.get_label_ids(class_labels)
        if callback_on_step_end is not None and isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        settings = self.check_inputs(
            len(labels), guidance_scale, top_k, top_p, temperature, generator, output_type, more_smooth=more_smooth,
            num_images_per_label=num_images_per_label, max_batch_size=max_batch_size, fast_path=fast_path,
            return_dict=return_dict, callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, image=image, mask_image=mask_image,
        )
        labels = [label for label in labels for _ in range(num_images_per_label)]
        device, fast = self._execution_device, bool(fast_path)

        # 2. Editing: the image's own token maps and the keep-mask.
        edit = self.prepare_edit_inputs(image, mask_image, len(labels), device) if image is not None else None

        # 3. The scale loop, over batches that fit memory.
        self.scheduler.set_timesteps()
        sample_batch = partial(self._sample_batch, labels, settings, edit, fast, callback_on_step_end,
                               tuple(callback_on_step_end_tensor_inputs or ()))
        sample = sample_in_batches(
            sample_batch, len(labels),
            rows_at_once(len(labels), max_batch_size, self.transformer, self.vqvae.config, device, self._runners, fast),
            generator, device, sort_free=fast and sort_free_filter_matches_reference(device, self.transformer.config.vocab_size),
            retry_out_of_memory=max_batch_size is None, on_out_of_memory=self._free_cached_memory,
        )

        # 4. Decode and post-process.
        if output_type == "latent":
            images = sample.f_hat
        else:
            images_B3HW = self.decode_latents(sample.f_hat)
            images = self.image_processor.postprocess(images_B3HW, output_type=output_type,
                                                      do_denormalize=[False] * images_B3HW.shape[0])
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, sample.token_maps
        return VARPipelineOutput(images=images, token_maps=sample.token_maps)

    def _sample_batch(self, labels, settings: SamplingSettings, edit, fast: bool, callback_on_step_end,
                      callback_on_step_end_tensor_inputs, rows: slice, generator, sort_free: bool = False) -> BatchSample:
        """The scale loop for the images `rows` of the call."""
        transformer, vqvae, scheduler = self.transformer, self.vqvae, self.scheduler
        device, patch_nums = self._execution_device, scheduler.config.patch_nums
        labels_B = torch.tensor(labels[rows], device=device, dtype=torch.long)
        B, C = len(labels_B), vqvae.config.vq_embed_dim

        # Prepare the condition: [labels; null class], the conditional and unconditional halves of every step.
        cond_2BD = transformer.embed_class(torch.cat((labels_B, torch.full_like(labels_B, transformer.config.null_class))))
        x_2BlC = transformer.embed_first_scale(cond_2BD)
        if fast:
            runner = self._runners.get(transformer, 2 * B, use_cuda_graphs=torch.device(device).type == "cuda")
            runner.set_condition(cond_2BD)
        else:
            kv_cache, constants = transformer.new_kv_cache(), transformer.sampling_constants(cond_2BD)
        f_hat = torch.zeros(B, C, patch_nums[-1], patch_nums[-1], device=device, dtype=torch.float32)
        token_maps = []
        probabilities_valid = torch.ones((), dtype=torch.bool, device=device)  # read once at the end (fast path)
        filter_exact = torch.ones((), dtype=torch.bool, device=device)  # likewise

        for i, t in enumerate(self.progress_bar(scheduler.timesteps)):
            # 1. One transformer step on both halves, 2. guidance, 3. the scheduler samples this scale's tokens.
            if fast:
                logits_2BlV = runner.run(i, x_2BlC)
            else:
                logits_2BlV = transformer.forward_scale(x_2BlC, cond_2BD, kv_cache, constants=constants)
            logits_BlV = scheduler.apply_guidance(logits_2BlV[:B], logits_2BlV[B:], i, settings.guidance_scale)
            step = scheduler.step(
                logits_BlV, i, generator=generator, top_k=settings.top_k, top_p=settings.top_p,
                temperature=settings.temperature_at(i), more_smooth=settings.more_smooth,
                codebook=vqvae.quantizer.codebook.weight, sort_free=sort_free, sync_free=fast,
            )
            if fast:
                probabilities_valid &= step.probabilities_valid
            if sort_free:
                filter_exact &= step.filter_exact
            # 4. Embed the tokens (an edit keeps the image's own) and add them to f_hat; 5. the callback may replace
            # f_hat; 6. the next scale's input is taken from it.
            f_hat, token_map, next_BlC = self._add_scale(
                i, t, step, f_hat, settings.more_smooth, edit, rows, callback_on_step_end, callback_on_step_end_tensor_inputs
            )
            token_maps.append(token_map)
            if next_BlC is not None:
                x_2BlC = transformer.embed_next_scale(i + 1, next_BlC).repeat(2, 1, 1)

        if fast and not bool(probabilities_valid):
            raise RuntimeError(
                "Sampling met inf or NaN probabilities (the logits overflowed or are NaN; torch.multinomial would have "
                "raised 'probability tensor contains either inf, nan or element < 0'). Check the weights, or run in "
                "float32 / with fast_path=False to find the scale where it happens."
            )
        return BatchSample(f_hat=f_hat, token_maps=token_maps, filter_exact=bool(filter_exact) if sort_free else True)

    def _add_scale(self, i: int, t, step, f_hat: torch.Tensor, more_smooth: bool, edit, rows: slice,
                   callback_on_step_end, callback_on_step_end_tensor_inputs):
        """Scale i after the scheduler's step: its tokens become embeddings (an edit's kept positions take the image's
        own tokens), which are added to f_hat; the callback may then replace f_hat.

        Returns:
            `(f_hat, token_map, next_BlC)`: the updated f_hat `(B, C, H, W)`, the scale's tokens `(B, pn^2)` and the
            next scale's input `(B, pn_{i+1}^2, C)` taken from f_hat (`None` after the last scale).
        """
        vqvae, patch_nums = self.vqvae, self.scheduler.config.patch_nums
        pn, (B, C) = patch_nums[i], (f_hat.shape[0], vqvae.config.vq_embed_dim)
        token_map = step.token_map
        h_BlC = step.smoothed_embeddings if more_smooth else vqvae.embed_tokens(token_map)
        h_BChw = h_BlC.transpose(1, 2).reshape(B, C, pn, pn)
        if edit is not None:  # kept positions take the image's own tokens (the reference's replace_embedding)
            image_tokens_Bl = edit["image_tokens"][i][rows]
            keep_B1hw = self.keep_mask_at_scale(edit["keep_Bhw"][rows], pn)
            gt_BChw = vqvae.embed_tokens(image_tokens_Bl).transpose(1, 2).reshape(B, C, pn, pn)
            h_BChw = gt_BChw * keep_B1hw + h_BChw * (1 - keep_B1hw)
            token_map = torch.where(keep_B1hw.flatten(1).bool(), image_tokens_Bl, token_map)

        f_hat, next_BChw = vqvae.next_scale_input(i, f_hat, h_BChw)
        if callback_on_step_end is not None:
            callback_kwargs = {name: self.decode_latents(f_hat) if name == "image_estimate" else
                               {"f_hat": f_hat, "token_map": token_map}[name] for name in callback_on_step_end_tensor_inputs}
            callback_outputs = callback_on_step_end(self, i, int(t), callback_kwargs) or {}
            if "f_hat" in callback_outputs:
                f_hat = check_returned_f_hat(callback_outputs["f_hat"], f_hat, i)
                if i + 1 < len(patch_nums):  # the quantizer's own step: area-downsample f_hat to the next scale
                    next_BChw = F.interpolate(f_hat, size=(patch_nums[i + 1],) * 2, mode="area")
        if i + 1 == len(patch_nums):
            return f_hat, token_map, None
        return f_hat, token_map, next_BChw.reshape(B, C, -1).transpose(1, 2)


__all__ = ["VARPipeline", "VARPipelineOutput"]
