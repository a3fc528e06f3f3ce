"""The parts of [`VARPipeline`] around its scale loop: class labels and saved sampling defaults, argument checks and
editing inputs, devices and decoding. `pipelines/pipeline_var.py` keeps `__call__` and the loop itself.

The mixins read the pipeline's registered components (`self.vqvae`, `self.transformer`, `self.scheduler`), its
`label_map`, `image_processor`/`mask_processor`, fast-path `_runners` and `decode_batch_size`, all set by
`VARPipeline.__init__`.
"""

from typing import Any, Dict, List, Optional, Sequence, Union

import torch

from var_hf.fast_sampling import fast_decoding, is_channels_last
from var_hf.labels import random_class_ids
from var_hf.pipeline_inputs import (
    SamplingSettings, check_call_options, check_generator, check_int, encode_edit_inputs, keep_mask_at_scale,
)
from var_hf.sampling_batching import check_call_fits_memory

LabelLike = Union[int, str, None, Sequence[Union[int, str, None]]]


class VARLabelsMixin:
    """Class names and ids, and the sampling settings saved with the pipeline."""

    @property
    def labels(self) -> Dict[str, int]:
        """Every accepted class name (lower-case, synonyms included) -> class id."""
        return self.label_map.names

    @property
    def id2label(self) -> Dict[int, str]:
        return dict(self.label_map.id2label)

    @property
    def sampling_defaults(self) -> Dict[str, Any]:
        """The settings `__call__` uses for any it is not given (saved with the pipeline), as keyword arguments."""
        return dict(self.config.sampling_defaults)

    def get_label_ids(self, label: LabelLike) -> List[int]:
        """Class names, ids or `None` (unconditional, the null class) -> class ids; an unknown name raises a
        `ValueError` that lists the closest known names."""
        return self.label_map.resolve_many(label)

    def random_class_labels(self, batch_size: int, generator: Optional[torch.Generator] = None) -> List[int]:
        """Class ids drawn uniformly (with replacement) as the reference's `autoregressive_infer_cfg(B, label_B=None)`
        draws them: one `torch.multinomial` over the classes from the generator that then samples the tokens (pass it
        on to the pipeline; `None` is the device's default generator, as the reference's `g_seed=None`).

        ```python
        >>> import torch
        >>> from var_hf import VARPipeline, DEFAULT_MODEL
        >>> pipe = VARPipeline.from_pretrained(DEFAULT_MODEL)
        >>> generator = torch.Generator().manual_seed(0)
        >>> labels = pipe.random_class_labels(4, generator=generator)
        >>> images = pipe(labels, generator=generator).images
        >>> len(images), all(0 <= label < pipe.transformer.config.num_classes for label in labels)
        (4, True)

        ```
        """
        return random_class_ids(self.transformer.config.num_classes, batch_size, generator, self._execution_device)


class VARInputsMixin:
    """Every argument of `__call__` checked before any model work, and the inputs of an edit."""

    def check_inputs(self, batch_size, guidance_scale=None, top_k=None, top_p=None, temperature=None, generator=None,
                     output_type="pil", *, more_smooth=None, num_images_per_label=1, max_batch_size=None,
                     fast_path=False, return_dict=True, callback_on_step_end=None,
                     callback_on_step_end_tensor_inputs=(), image=None, mask_image=None) -> SamplingSettings:
        """Check every argument of `__call__` (for `batch_size` class labels) before any work; returns the call's
        [`SamplingSettings`]: the given values over `sampling_defaults`. Each error names its parameter."""
        if batch_size == 0:
            raise ValueError("class_labels is empty; pass at least one class id, name or None (unconditional).")
        settings = SamplingSettings.from_dict(self.sampling_defaults).replace(
            guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, temperature=temperature, more_smooth=more_smooth
        ).check_num_scales(self.scheduler.config.patch_nums)
        num_images = batch_size * check_int("num_images_per_label", num_images_per_label, minimum=1)
        check_call_options(
            max_batch_size=max_batch_size, fast_path=fast_path, return_dict=return_dict, output_type=output_type,
            callback_on_step_end=callback_on_step_end, callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            allowed_tensor_inputs=self._callback_tensor_inputs, image=image, mask_image=mask_image,
        )
        check_generator(generator, num_images, self._execution_device)
        check_call_fits_memory(num_images, max_batch_size, self.transformer, self.vqvae.config, self._execution_device)
        return settings

    def prepare_edit_inputs(self, image, mask_image, batch_size: int, device) -> Dict[str, Any]:
        """The image's token maps (`image_tokens`) and the keep-mask at the finest map (`keep_Bhw`, 1 = keep) for
        `batch_size` images; see `var_hf.pipeline_inputs.encode_edit_inputs`."""
        return encode_edit_inputs(image, mask_image, batch_size, self.vqvae, self.image_processor, self.mask_processor,
                                  self.scheduler.config.patch_nums[-1], device)

    keep_mask_at_scale = staticmethod(keep_mask_at_scale)  # the reference's replace_embedding rule


class VARDevicesMixin:
    """Device moves (which drop the fast path's caches), offload refusals, and decoding f_hat to images."""

    def enable_model_cpu_offload(self, *args, **kwargs):
        """Not supported: offload hooks move a model when its `forward` runs, but sampling calls the models'
        scale-level methods (`embed_class`, `forward_scale`, `decode`), which the hooks never see."""
        raise NotImplementedError(
            "VARPipeline does not support CPU offloading: sampling goes through the models' per-scale methods, which "
            "diffusers' offload hooks do not intercept. Keep the pipeline on one device (pipe.to('cuda', "
            "torch.bfloat16); d36, the largest model, holds 2.35B parameters, 4.7 GB in bf16) or lower max_batch_size."
        )

    enable_sequential_cpu_offload = enable_model_cpu_offload

    def to(self, *args, **kwargs):
        """`DiffusionPipeline.to`; also drops the fast path's caches and graphs (they hold the old device's memory)."""
        self._runners.clear()
        return super().to(*args, **kwargs)

    def release_fast_path(self):
        """Free the fast path's pre-allocated caches and captured CUDA graphs (they are kept between calls)."""
        self._runners.clear()

    def _free_cached_memory(self):
        """Before an out-of-memory retry: drop the fast path's caches and return cached blocks to the device."""
        self._runners.clear()
        if torch.cuda.is_available() and torch.device(self._execution_device).type == "cuda":
            torch.cuda.empty_cache()

    def decode_latents(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, vq_embed_dim, h, w) -> float32 images in [0, 1], `pipe.decode_batch_size` at a time (None: all).
        [-1, 1] -> [0, 1] happens in the decoder's dtype, then float32, as the reference's `fhat_to_img(...).add_(1)
        .mul_(0.5)`. With channels-last VQVAE weights (opt-in) decoding autotunes cuDNN: faster, other rounding."""
        channels_last = is_channels_last(self.vqvae)
        images = []
        for f_hat_part in f_hat.split(self.decode_batch_size or f_hat.shape[0]):
            if channels_last:
                with fast_decoding(f_hat.device):
                    part = self.vqvae.decode(f_hat_part.contiguous(memory_format=torch.channels_last))
            else:
                part = self.vqvae.decode(f_hat_part)
            images.append(part.add_(1).mul_(0.5).float().contiguous())
        return torch.cat(images)
