"""VARPipeline: class-conditional image generation by next-scale prediction, and zero-shot editing.

Components (diffusers `register_modules`): `vqvae` ([`MultiScaleVQVAE`]), `transformer` ([`VARTransformer`]) and
`scheduler` ([`VARScaleScheduler`]). The loop, for K scales:

    cond = class embedding of [labels; null class]            (2B, D): conditional and unconditional halves
    x = first-scale input; f_hat = 0                           (B, vq_embed_dim, pn_K, pn_K)
    for k in 0..K-1:
        logits = transformer.forward_scale(x, cond, kv_cache)  (2B, pn_k^2, V), appends keys/values to the cache
        tokens = scheduler.step(guided logits, k, generator)   (B, pn_k^2)
        f_hat += phi_k(upsample(codes(tokens)));  x = embed(area-downsample(f_hat) to pn_{k+1})
    image = vqvae.decode(f_hat)
"""

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging

from ..fast_sampling import (
    DECODE_BATCH_SIZE,
    StaticScaleRunners,
    fast_decoding,
    is_channels_last,
    max_batch_for_memory,
    resolve_fast_path,
    sort_free_filter_matches_reference,
)
from ..labels import LabelMap, imagenet_id2label, is_default_id2label
from ..modeling_var import VARTransformer
from ..modeling_vqvae import MultiScaleVQVAE
from ..scheduling_var import VARScaleScheduler

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class VARPipelineOutput(BaseOutput):
    """
    Args:
        images (`List[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
            Generated images in [0, 1] (`pil`, `np` (B, H, W, 3), `pt` (B, 3, H, W)), or the final `f_hat` latents
            (B, vq_embed_dim, h, w) for `output_type="latent"`.
        token_maps (`List[torch.LongTensor]`):
            The sampled token maps, coarse to fine, each (B, pn * pn).
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    token_maps: List[torch.LongTensor]


class VARPipeline(DiffusionPipeline):
    r"""
    Class-conditional generation with VAR (Visual AutoRegressive modeling), plus zero-shot inpainting, outpainting and
    class-conditional editing.

    Args:
        vqvae ([`MultiScaleVQVAE`]): tokenizer/decoder.
        transformer ([`VARTransformer`]): next-scale predictor.
        scheduler ([`VARScaleScheduler`]): patch schedule, guidance schedule and token sampling.
        id2label (`Dict[int, str]`, *optional*):
            Class names, saved in `model_index.json`. Defaults to the transformer config's names, or ImageNet's for a
            1000-class model.

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

    def __init__(
        self,
        vqvae: MultiScaleVQVAE,
        transformer: VARTransformer,
        scheduler: VARScaleScheduler,
        id2label: Optional[dict] = None,
    ):
        super().__init__()
        self.register_modules(vqvae=vqvae, transformer=transformer, scheduler=scheduler)
        self._check_components()
        if id2label is None:
            id2label = self._default_id2label()
        id2label = {int(k): str(v) for k, v in id2label.items()}
        self.register_to_config(id2label={str(k): v for k, v in id2label.items()})
        self.label_map = LabelMap(id2label, transformer.config.num_classes)
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_resize=True, do_normalize=True)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=1, do_resize=True, do_normalize=False, do_binarize=False, do_convert_grayscale=True
        )
        self._runners = StaticScaleRunners()  # the fast path's static caches and CUDA graphs, kept between calls
        # Images decoded per decoder call: bounded so decoding memory does not grow with the batch. None decodes a
        # whole chunk at once, as the reference does (on a GPU, convolution algorithms can depend on the batch size).
        self.decode_batch_size: Optional[int] = DECODE_BATCH_SIZE

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs):
        """Load from a local folder or a Hub repo id.

        diffusers cannot resolve non-diffusers components from a repo id, so a repo id is first fetched with
        `huggingface_hub.snapshot_download` (honouring `revision`, `cache_dir`, `token`, `local_files_only`) and the
        local snapshot is loaded.
        """
        path = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download

            hub_kwargs = {k: kwargs.pop(k) for k in ("revision", "cache_dir", "token", "local_files_only", "proxies") if k in kwargs}
            try:
                path = snapshot_download(repo_id=path, **hub_kwargs)
            except Exception as err:  # huggingface_hub raises many types; all mean "could not get the files"
                raise OSError(
                    f"Could not load a VAR pipeline from {pretrained_model_name_or_path!r}: it is not a local folder and "
                    f"the Hub snapshot could not be fetched ({type(err).__name__}: {err})."
                ) from err
        for key in ("revision", "cache_dir", "token", "local_files_only", "proxies"):
            kwargs.pop(key, None)
        return super().from_pretrained(path, **kwargs)

    def _check_components(self):
        vq, tr, sch = self.vqvae.config, self.transformer.config, self.scheduler.config
        if list(vq.patch_nums) != list(tr.patch_nums) or list(sch.patch_nums) != list(tr.patch_nums):
            raise ValueError(
                f"patch_nums differ between components: vqvae {list(vq.patch_nums)}, transformer {list(tr.patch_nums)}, "
                f"scheduler {list(sch.patch_nums)}; they must be equal."
            )
        if vq.vocab_size != tr.vocab_size or vq.vq_embed_dim != tr.vq_embed_dim:
            raise ValueError(
                f"The transformer (vocab {tr.vocab_size}, code dim {tr.vq_embed_dim}) does not fit the VQVAE "
                f"(vocab {vq.vocab_size}, code dim {vq.vq_embed_dim})."
            )

    def _default_id2label(self) -> Dict[int, str]:
        config = self.transformer.config
        if not is_default_id2label(config.id2label) and len(config.id2label) == config.num_classes:
            return dict(config.id2label)
        if config.num_classes == 1000:
            return imagenet_id2label()
        return {i: str(i) for i in range(config.num_classes)}

    # ------------------------------------------------------------------ offloading

    def enable_model_cpu_offload(self, *args, **kwargs):
        """Not supported: offload hooks move a model when its `forward` runs, but sampling calls the models'
        scale-level methods (`embed_class`, `forward_scale`, `decode`), which the hooks never see."""
        raise NotImplementedError(
            "VARPipeline does not support CPU offloading: sampling goes through the models' per-scale methods, which "
            "diffusers' offload hooks do not intercept. Keep the pipeline on one device (pipe.to('cuda', "
            "torch.bfloat16); d36, the largest model, holds 2.35B parameters, 4.7 GB in bf16) or lower max_batch_size."
        )

    def enable_sequential_cpu_offload(self, *args, **kwargs):
        """Not supported; see [`enable_model_cpu_offload`]."""
        self.enable_model_cpu_offload()

    # ------------------------------------------------------------------ labels

    @property
    def labels(self) -> Dict[str, int]:
        """Every accepted class name (lower-case, synonyms included) -> class id."""
        return self.label_map.names

    @property
    def id2label(self) -> Dict[int, str]:
        return dict(self.label_map.id2label)

    def get_label_ids(self, label: Union[int, str, None, Sequence[Union[int, str, None]]]) -> List[int]:
        """Class names, ids or `None` (unconditional, the null class) -> class ids.

        An unknown name raises a `ValueError` that lists the closest known names.
        """
        return self.label_map.resolve_many(label)

    def random_class_labels(self, batch_size: int, generator: Optional[torch.Generator] = None) -> List[int]:
        """Class ids drawn uniformly at random (with replacement), as the reference's
        `autoregressive_infer_cfg(B, label_B=None, g_seed=s)` draws them: one `torch.multinomial` over the classes,
        from the generator that then samples the tokens. Pass the same generator on to the pipeline to get the
        reference's images for `label_B=None` (with `generator=None`, the device's default generator, as its
        `g_seed=None`).

        Example:

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
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(
                f"generator must be one torch.Generator (the one the sampling call will use) or None, got "
                f"{type(generator).__name__}."
            )
        # The draw happens where the generator lives, as the reference's (its uniform vector sits on its rng's device).
        device = generator.device if generator is not None else self._execution_device
        num_classes = self.transformer.config.num_classes
        uniform_1N = torch.full((1, num_classes), 1.0 / num_classes, dtype=torch.float32, device=device)
        return torch.multinomial(uniform_1N, batch_size, replacement=True, generator=generator).reshape(-1).tolist()

    # ------------------------------------------------------------------ input checks

    def check_inputs(self, batch_size, guidance_scale, top_k, top_p, temperature, generator, output_type):
        if guidance_scale is None or guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (0 disables guidance), got {guidance_scale}.")
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables top-k), got {top_k!r}.")
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must lie in [0, 1] (0 disables nucleus sampling), got {top_p}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
            raise ValueError(
                f"Got a list of {len(generator)} generators for a batch of {batch_size} images "
                f"(labels x num_images_per_label); pass one generator or exactly {batch_size}."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")

    @staticmethod
    def _is_image_like(obj) -> bool:
        return isinstance(obj, (PIL.Image.Image, np.ndarray, torch.Tensor))

    def prepare_edit_inputs(self, image, mask_image, batch_size: int, device) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Image -> its token maps (batch_size copies); mask -> keep-mask at the finest token map (B, pn, pn), 1 = keep.

        `mask_image` follows diffusers' inpainting convention (white = regenerate, black = keep) and may be an image
        (PIL / np / tensor) of the input image's size or the model's, or a box `(y0, x0, y1, x1)` in relative
        coordinates to regenerate.
        """
        images = image if isinstance(image, list) else _split_batch(image, image_ndim=3)
        if not images or not all(self._is_image_like(im) for im in images):
            kinds = sorted({type(im).__name__ for im in images})
            raise ValueError(f"image must be a PIL image, numpy array or torch tensor (or a list of them), got {kinds}.")
        if len(images) not in (1, batch_size):
            raise ValueError(f"Got {len(images)} images for a batch of {batch_size}; pass one or {batch_size}.")
        res = self.vqvae.config.image_size
        pn = self.scheduler.config.patch_nums[-1]
        if mask_image is None:
            raise ValueError("Editing needs mask_image (white = regenerate) or a box (y0, x0, y1, x1); got only image.")
        if isinstance(mask_image, (tuple, list)) and len(mask_image) == 4 and all(isinstance(v, (int, float)) for v in mask_image):
            y0, x0, y1, x1 = (float(v) for v in mask_image)
            if not (0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1):
                raise ValueError(f"A mask box (y0, x0, y1, x1) needs 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1, got {mask_image}.")
            regen_hw = torch.zeros(pn, pn)
            regen_hw[round(y0 * pn) : round(y1 * pn), round(x0 * pn) : round(x1 * pn)] = 1
            regen_B1hw = regen_hw[None, None].expand(len(images), 1, pn, pn)
        else:
            masks = mask_image if isinstance(mask_image, list) else _split_batch(mask_image, image_ndim=3)
            if not all(self._is_image_like(m) for m in masks):
                raise ValueError(
                    f"mask_image must be a PIL image, numpy array, torch tensor, a list of them, or a box "
                    f"(y0, x0, y1, x1); got {type(mask_image).__name__}."
                )
            if len(masks) not in (1, len(images)):
                raise ValueError(f"Got {len(masks)} masks for {len(images)} images.")
            for m, im in zip(masks * (len(images) // len(masks)), images):
                m_hw, im_hw = _spatial_size(m), _spatial_size(im)
                if m_hw not in (im_hw, (res, res)):
                    raise ValueError(
                        f"mask_image has size {m_hw} but the image has {im_hw} (and the model works at {(res, res)}); "
                        f"give the mask the image's size."
                    )
            mask_B1HW = self.mask_processor.preprocess(masks, height=res, width=res, resize_mode="crop")
            regen_B1hw = (F.interpolate(mask_B1HW.float(), size=(pn, pn), mode="area") > 0.5).float()
        pixels = self.image_processor.preprocess(images, height=res, width=res, resize_mode="crop")
        pixels = pixels.to(device=device, dtype=self.vqvae.dtype)
        image_tokens = self.vqvae.encode_tokens(pixels)
        reps = batch_size // len(images)
        image_tokens = [t.repeat_interleave(reps, dim=0) for t in image_tokens]
        keep_Bhw = (1 - regen_B1hw[:, 0]).to(device)
        keep_Bhw = keep_Bhw.repeat_interleave(batch_size // keep_Bhw.shape[0], dim=0)
        return image_tokens, keep_Bhw

    @staticmethod
    def keep_mask_at_scale(keep_Bhw: torch.Tensor, pn: int) -> torch.Tensor:
        """The reference's `replace_embedding` rule: bilinear resize of the keep-mask, > 0.5; the first maps
        (at most 3 tokens) are always kept from the image. Returns (B, 1, pn, pn) in {0, 1}."""
        keep_B1hw = F.interpolate(keep_Bhw.unsqueeze(1).float(), size=(pn, pn), mode="bilinear", align_corners=False)
        keep_B1hw = keep_B1hw.gt(0.5).float()
        if pn * pn <= 3:
            keep_B1hw.fill_(1)
        return keep_B1hw

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, str, None, Sequence[Union[int, str, None]]] = None,
        guidance_scale: float = 4.0,
        top_k: int = 900,
        top_p: float = 0.95,
        temperature: float = 1.0,
        more_smooth: bool = False,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        num_images_per_label: int = 1,
        image=None,
        mask_image=None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["VARPipeline", int, int, Dict[str, Any]], Dict[str, Any]]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("image_estimate",),
        fast_path: Optional[bool] = None,
        max_batch_size: Optional[int] = None,
    ) -> Union[VARPipelineOutput, Tuple]:
        r"""
        Generate images.

        Args:
            class_labels (`int`, `str`, `None`, a list of them, or a 1-d integer tensor / array):
                Class ids, class names (`pipe.labels`), or `None` for unconditional samples (the null class). A tensor
                is one id per image, like the reference's `label_B`.
            guidance_scale (`float`, *optional*, defaults to 4.0):
                The reference's `cfg`: at scale k, `logits = (1 + t_k) cond - t_k uncond` with `t_k = guidance_scale *
                k / (K - 1)` (linear schedule). 0 disables guidance.
            top_k (`int`, *optional*, defaults to 900):
                Keep the k most likely codes at each position (0 disables).
            top_p (`float`, *optional*, defaults to 0.95):
                Nucleus sampling threshold (0 disables).
            temperature (`float`, *optional*, defaults to 1.0):
                Softmax temperature (1 is the reference).
            more_smooth (`bool`, *optional*, defaults to `False`):
                The reference's Gumbel-softmax smoothing of the fed-forward codes (visual quality; not for FID).
            generator (`torch.Generator` or a list, *optional*):
                One generator for the batch (seed it like the reference's `g_seed` to reproduce its samples on the
                same device), or one per image.
            num_images_per_label (`int`, *optional*, defaults to 1):
                Images per label; the batch is `len(labels) * num_images_per_label`, labels repeated in place.
            image (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor` or a list, *optional*):
                Image to edit (resized and centre-cropped to the model's resolution), one per image of the batch or
                one for all; a 4-D tensor (B, C, H, W) or array (B, H, W, C) is a batch. Encoded in the weights'
                precision even under autocast, as the reference's notebook does. Needs `mask_image`.
            mask_image (image-like, a list, or a box `(y0, x0, y1, x1)` in [0, 1], *optional*):
                White = regenerate, black = keep. At every scale the kept tokens are forced from the image's own
                token maps; only the masked ones are sampled (inpainting, outpainting, class-conditional editing).
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"`, `"pt"` (images in [0, 1]) or `"latent"` (final f_hat).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return a [`VARPipelineOutput`] instead of a tuple `(images, token_maps)`.
            callback_on_step_end (`Callable`, *optional*):
                Called after each scale as `callback(pipe, scale_index, scale_index, tensors)`; `tensors` holds the
                names in `callback_on_step_end_tensor_inputs`: `image_estimate` (the image decoded from the scales so
                far, (B, 3, H, W) in [0, 1], for coarse-to-fine previews), `f_hat`, `token_map`. A returned `f_hat`
                replaces the running one. With chunking, called for every chunk.
            fast_path (`bool`, *optional*):
                The fast path (see `docs/performance.md`): per-scale CUDA graphs on static buffers, sort-free
                top-k/top-p (on CUDA), no per-scale host syncs. `None` (default) turns it on exactly when the
                pipeline runs on CUDA. It gives the tokens and images of `fast_path=False` for the same seed, in any
                dtype and under autocast, ties in bf16 logits included (for vocabularies of more than 128 codes,
                whose CUDA sort is stable); for bf16 speed load the pipeline with `dtype=torch.bfloat16`. Faster,
                inexact decoding is a separate opt-in: `pipe.vqvae.to(memory_format=torch.channels_last)`.
            max_batch_size (`int`, *optional*):
                Sample in chunks of at most this many images. `None`: on CUDA, as many as the free memory should
                hold (an estimate; a chunk that still runs out of memory is retried at half the size from rewound
                generators); elsewhere all at once. With one generator the draws depend on the chunking; with one
                generator per image they do not.
        """
        labels = self.get_label_ids(class_labels)
        if not isinstance(num_images_per_label, int) or num_images_per_label < 1:
            raise ValueError(f"num_images_per_label must be an int >= 1, got {num_images_per_label!r}.")
        labels = [label for label in labels for _ in range(num_images_per_label)]
        B = len(labels)
        self.check_inputs(B, guidance_scale, top_k, top_p, temperature, generator, output_type)
        unknown = set(callback_on_step_end_tensor_inputs or ()) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {sorted(unknown)} not in {self._callback_tensor_inputs}.")
        if image is None and mask_image is not None:
            raise ValueError("mask_image was given without image; pass the image to edit.")

        device = self._execution_device
        fast = resolve_fast_path(fast_path, device)
        chunk_size = self._chunk_size(B, max_batch_size, fast, device)
        editing = image is not None
        if editing:
            image_tokens, keep_Bhw = self.prepare_edit_inputs(image, mask_image, B, device)
        self.scheduler.set_timesteps(device=device)
        edit = (image_tokens, keep_Bhw) if editing else None
        sample_args = (labels, guidance_scale, top_k, top_p, temperature, more_smooth, generator, edit, fast,
                       callback_on_step_end, callback_on_step_end_tensor_inputs)
        generator_states = _generator_states(generator, device)
        while True:
            try:
                f_hat, token_maps = self._sample_in_chunks(chunk_size, *sample_args)
                break
            except torch.OutOfMemoryError:
                # Chunking by memory rather than failing: the estimate was too optimistic. The generators are rewound,
                # so the result is what this smaller chunk size would have given from the start.
                if max_batch_size is not None or chunk_size == 1:
                    raise
                self._runners.clear()
                if torch.device(device).type == "cuda":
                    torch.cuda.empty_cache()
                _restore_generator_states(generator, device, generator_states)
                logger.warning(f"Out of memory with {chunk_size} images per chunk; retrying with {chunk_size // 2}.")
                chunk_size //= 2

        if output_type == "latent":
            images = f_hat
        else:
            images_B3HW = self.decode_latents(f_hat)
            images = self.image_processor.postprocess(
                images_B3HW, output_type=output_type, do_denormalize=[False] * images_B3HW.shape[0]
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, token_maps
        return VARPipelineOutput(images=images, token_maps=token_maps)

    # ------------------------------------------------------------------ sampling internals

    def _sample_in_chunks(
        self, chunk_size, labels, guidance_scale, top_k, top_p, temperature, more_smooth, generator, edit, fast,
        callback_on_step_end, callback_on_step_end_tensor_inputs,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Sample all images, `chunk_size` at a time; returns the final f_hat (B, C, pn, pn) and the token maps."""
        B = len(labels)
        chunks = [slice(start, min(start + chunk_size, B)) for start in range(0, B, chunk_size)]
        if len(chunks) > 1:
            logger.info(
                f"Sampling {B} images in {len(chunks)} chunks of at most {chunk_size} (to fit memory). With one "
                f"generator the draws depend on the chunking; pass one generator per image for chunk-independent results."
            )
        device = self._execution_device
        sort_free = fast and sort_free_filter_matches_reference(device, self.transformer.config.vocab_size)
        f_hats, token_maps_per_chunk = [], []
        with self.progress_bar(total=self.scheduler.num_scales * len(chunks)) as progress:
            for chunk in chunks:
                chunk_generator = generator[chunk] if isinstance(generator, (list, tuple)) else generator
                chunk_edit = ([t[chunk] for t in edit[0]], edit[1][chunk]) if edit is not None else None
                chunk_args = (labels[chunk], guidance_scale, top_k, top_p, temperature, more_smooth, chunk_generator,
                              chunk_edit, fast, progress, callback_on_step_end, callback_on_step_end_tensor_inputs)
                generator_states = _generator_states(chunk_generator, device) if sort_free else None
                f_hat, chunk_token_maps, filter_exact = self._sample_chunk(*chunk_args, sort_free=sort_free)
                if not filter_exact:
                    # More logits tied with the k-th largest than the sort-free filter's short list holds (degenerate
                    # logits): its tokens would not be the reference's, so this chunk is drawn again, sorting.
                    logger.info("Logits tied beyond the sort-free filter's reach; re-sampling the chunk with sorting.")
                    _restore_generator_states(chunk_generator, device, generator_states)
                    f_hat, chunk_token_maps, _ = self._sample_chunk(*chunk_args, sort_free=False)
                f_hats.append(f_hat)
                token_maps_per_chunk.append(chunk_token_maps)
        return torch.cat(f_hats, dim=0), [torch.cat(maps, dim=0) for maps in zip(*token_maps_per_chunk)]

    def _chunk_size(self, batch_size: int, max_batch_size: Optional[int], fast: bool, device) -> int:
        if max_batch_size is not None:
            if not isinstance(max_batch_size, int) or max_batch_size < 1:
                raise ValueError(f"max_batch_size must be an int >= 1 (or None: chosen from free memory), got {max_batch_size!r}.")
            return min(max_batch_size, batch_size)
        if torch.device(device).type != "cuda":
            return batch_size
        if fast and self._runners.holds(2 * batch_size):
            return batch_size  # this batch ran in one pass before, and its cache is still allocated
        self._runners.clear()  # kept caches would otherwise count against this batch
        torch.cuda.empty_cache()
        fits = max_batch_for_memory(self.transformer, self.vqvae.config, device)
        return min(batch_size, fits) if fits is not None else batch_size

    def to(self, *args, **kwargs):
        """`DiffusionPipeline.to`, which also drops the fast path's caches and graphs (they hold the old device's
        memory and pointers to the old weights)."""
        self._runners.clear()
        return super().to(*args, **kwargs)

    def release_fast_path(self):
        """Free the fast path's pre-allocated caches and captured CUDA graphs (they are kept between calls)."""
        self._runners.clear()

    def decode_latents(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat (B, vq_embed_dim, h, w) -> float32 images in [0, 1], `pipe.decode_batch_size` at a time (16 by
        default) so the decoder's memory does not grow with the batch (None: all at once).

        [-1, 1] -> [0, 1] is done in the decoder's output dtype before the cast to float32, as the reference's
        `fhat_to_img(...).add_(1).mul_(0.5)` is: under autocast its images are then the reference's to the bit.
        Decoding runs in the layout of the VQVAE's weights: after `pipe.vqvae.to(memory_format=torch.channels_last)`
        (opt-in, as in diffusers) it runs channels-last with cuDNN autotuning, faster on GPUs but rounded by other
        convolution algorithms than the reference's."""
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

    def _sample_chunk(
        self, labels, guidance_scale, top_k, top_p, temperature, more_smooth, generator, edit, fast, progress,
        callback_on_step_end, callback_on_step_end_tensor_inputs, sort_free: bool = False,
    ) -> Tuple[torch.Tensor, List[torch.Tensor], bool]:
        """The scale loop for one batch: returns the final f_hat (B, C, pn, pn), the token maps, and whether the
        sort-free filter (if used) was exact at every scale."""
        transformer, vqvae, scheduler = self.transformer, self.vqvae, self.scheduler
        device = self._execution_device
        patch_nums = list(scheduler.config.patch_nums)
        K, C, B = len(patch_nums), vqvae.config.vq_embed_dim, len(labels)

        labels_B = torch.tensor(labels, device=device, dtype=torch.long)
        null_B = torch.full_like(labels_B, transformer.config.null_class)
        cond_2BD = transformer.embed_class(torch.cat((labels_B, null_B)))
        x_2BlC = transformer.embed_first_scale(cond_2BD)
        if fast:
            runner = self._runners.get(transformer, 2 * B, use_cuda_graphs=torch.device(device).type == "cuda")
            runner.set_condition(cond_2BD)
        else:
            kv_cache = transformer.new_kv_cache()
            constants = transformer.sampling_constants(cond_2BD)  # per-run constants, as the runner's
        f_hat = torch.zeros(B, C, patch_nums[-1], patch_nums[-1], device=device, dtype=torch.float32)
        codebook = vqvae.quantizer.codebook.weight
        token_maps = []
        probabilities_valid = torch.ones((), dtype=torch.bool, device=device)  # read once at the end (fast path)
        filter_exact = torch.ones((), dtype=torch.bool, device=device)  # likewise

        for si, pn in enumerate(patch_nums):
            if fast:
                logits_2BlV = runner.run(si, x_2BlC)
            else:
                logits_2BlV = transformer.forward_scale(x_2BlC, cond_2BD, kv_cache, constants=constants)
            logits_BlV = scheduler.apply_guidance(logits_2BlV[:B], logits_2BlV[B:], si, guidance_scale)
            step = scheduler.step(
                logits_BlV, si, generator=generator, top_k=top_k, top_p=top_p, temperature=temperature,
                more_smooth=more_smooth, codebook=codebook, sort_free=sort_free, sync_free=fast,
            )
            if step.probabilities_valid is not None:
                probabilities_valid = probabilities_valid & step.probabilities_valid
            if step.filter_exact is not None:
                filter_exact = filter_exact & step.filter_exact
            token_map = step.token_map
            h_BlC = step.smoothed_embeddings if more_smooth else vqvae.embed_tokens(token_map)
            h_BChw = h_BlC.transpose(1, 2).reshape(B, C, pn, pn)
            if edit is not None:
                image_tokens, keep_Bhw = edit
                keep_B1hw = self.keep_mask_at_scale(keep_Bhw, pn)
                gt_BChw = vqvae.embed_tokens(image_tokens[si]).transpose(1, 2).reshape(B, C, pn, pn)
                h_BChw = gt_BChw * keep_B1hw + h_BChw * (1 - keep_B1hw)
                keep_Bl = keep_B1hw.flatten(1).bool()
                token_map = torch.where(keep_Bl, image_tokens[si], token_map)
            token_maps.append(token_map)
            f_hat, next_BChw = vqvae.next_scale_input(si, f_hat, h_BChw)
            if si != K - 1:
                next_BlC = next_BChw.reshape(B, C, -1).transpose(1, 2)
                x_2BlC = transformer.embed_next_scale(si + 1, next_BlC).repeat(2, 1, 1)

            if callback_on_step_end is not None:
                tensors = {}
                for name in callback_on_step_end_tensor_inputs:
                    if name == "image_estimate":
                        tensors[name] = self.decode_latents(f_hat)
                    else:
                        tensors[name] = {"f_hat": f_hat, "token_map": token_map}[name]
                returned = callback_on_step_end(self, si, si, tensors) or {}
                if "f_hat" in returned:
                    f_hat = returned["f_hat"]
            progress.update()
        if fast and not bool(probabilities_valid):
            raise RuntimeError(
                "Sampling met inf or NaN probabilities (the logits overflowed or are NaN; torch.multinomial would have "
                "raised 'probability tensor contains either inf, nan or element < 0'). Check the weights, or run in "
                "float32 / with fast_path=False to find the scale where it happens."
            )
        return f_hat, token_maps, bool(filter_exact) if sort_free else True


def _generators_drawn_from(generator, device) -> List[torch.Generator]:
    """The generators a sampling call draws from: the given ones, or the device's default generator for None (so a
    retried chunk can rewind the global random state too)."""
    if generator is None:
        device = torch.device(device)
        if device.type == "cuda":
            return [torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]]
        return [torch.default_generator]
    return list(generator) if isinstance(generator, (list, tuple)) else [generator]


def _generator_states(generator, device) -> List[torch.Tensor]:
    return [g.get_state() for g in _generators_drawn_from(generator, device)]


def _restore_generator_states(generator, device, states: List[torch.Tensor]):
    for g, state in zip(_generators_drawn_from(generator, device), states):
        g.set_state(state)


def _split_batch(obj, image_ndim: int) -> list:
    """A batched tensor or array (one more dimension than an image, as diffusers accepts) -> a list of images;
    anything else -> a one-element list."""
    if isinstance(obj, (torch.Tensor, np.ndarray)) and obj.ndim == image_ndim + 1:
        return list(obj)
    return [obj]


def _spatial_size(obj) -> Tuple[int, int]:
    """(H, W) of a PIL image, an (H, W[, C]) array or a ([B, ]C, H, W) / (H, W) tensor."""
    if isinstance(obj, PIL.Image.Image):
        return (obj.height, obj.width)
    if isinstance(obj, np.ndarray):
        return tuple(obj.shape[:2]) if obj.ndim in (2, 3) else tuple(obj.shape[1:3])
    return tuple(obj.shape[-2:])


__all__ = ["VARPipeline", "VARPipelineOutput"]
