"""Argument checks and input preparation of [`VARPipeline`], kept beside the pipeline so its `__call__` reads as
the sampling loop. Every check names the parameter and runs before any model work.

- [`SamplingSettings`]: the per-call sampling settings (guidance, top-k, top-p, temperature, smoothing) in one frozen
  dataclass; a pipeline stores its recommended values in its config (`sampling_defaults` in `model_index.json`).
- Images to edit and masks follow diffusers' [`VaeImageProcessor`] conventions: PIL images; float arrays/tensors in
  [0, 1] (tensors may also be in [-1, 1]); `uint8` arrays/tensors in [0, 255], read exactly as the PIL image they
  come from (`np.array(pil_image)` means `pil_image`). NaN, inf and other integer types are refused.
"""

import math
import numbers
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Mapping, Tuple, Union

import numpy as np
import PIL.Image
import torch

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def _real(name: str, value, minimum: float = None, exclusive_minimum: float = None, maximum: float = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    if exclusive_minimum is not None and value <= exclusive_minimum:
        raise ValueError(f"{name} must be > {exclusive_minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}.")
    return value


def check_int(name: str, value, minimum: int) -> int:
    """An int (numpy ints too, never bool) >= minimum, or a ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}.")
    return int(value)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {type(value).__name__} {value!r}.")
    return bool(value)


def check_temperature(name: str, value) -> Union[float, Tuple[float, ...]]:
    """One softmax temperature (> 0) for every scale, or a list/tuple of them, one per scale, coarse to fine."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list; give one number (> 0) or one number per scale, coarse to fine.")
        return tuple(_real(f"{name}[{k}]", v, exclusive_minimum=0.0) for k, v in enumerate(value))
    if not isinstance(value, numbers.Real):  # str and bytes included
        raise ValueError(
            f"{name} must be a number > 0 or a list of them (one per scale, coarse to fine), got "
            f"{type(value).__name__} {value!r}."
        )
    return _real(name, value, exclusive_minimum=0.0)


def check_temperature_scales(temperature, patch_nums) -> None:
    """A per-scale temperature (a tuple from `check_temperature`) must have one value per scale of `patch_nums`."""
    if isinstance(temperature, tuple) and len(temperature) != len(patch_nums):
        raise ValueError(
            f"temperature has {len(temperature)} values but this pipeline samples {len(patch_nums)} scales "
            f"(patch_nums {list(patch_nums)}); give one value per scale, coarse to fine, or a single number."
        )


def as_json_value(value):
    """A setting as JSON writes and reads it (a per-scale temperature tuple as a list), so saved and given compare."""
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings of one call.

    Args:
        guidance_scale (`float`, defaults to 4.0): the reference's `cfg`; 0 disables guidance.
        top_k (`int`, defaults to 900): keep the k most likely codes (0 disables).
        top_p (`float`, defaults to 0.95): nucleus threshold in [0, 1] (0 disables).
        temperature (`float` or a list of `float`, defaults to 1.0): softmax temperature, > 0; a list gives one per
            scale, coarse to fine (its length must match the pipeline's patch schedule). A temperature above 1 on the
            coarse scales only widens the range of shapes without adding noise to the fine texture.
        more_smooth (`bool`, defaults to `False`): the reference's Gumbel-softmax smoothing of the fed-back codes.

    The defaults are the reference's ImageNet settings (`autoregressive_infer_cfg(cfg=4, top_k=900, top_p=0.95)`).
    """

    guidance_scale: float = 4.0
    top_k: int = 900
    top_p: float = 0.95
    temperature: Union[float, Tuple[float, ...]] = 1.0
    more_smooth: bool = False

    def __post_init__(self):
        # Validated on construction, so a settings object is always usable; values become plain Python numbers.
        checked = {
            "guidance_scale": _real("guidance_scale", self.guidance_scale, minimum=0.0),
            "top_k": check_int("top_k", self.top_k, minimum=0),
            "top_p": _real("top_p", self.top_p, minimum=0.0, maximum=1.0),
            "temperature": check_temperature("temperature", self.temperature),
            "more_smooth": check_bool("more_smooth", self.more_smooth),
        }
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], name: str = "sampling_defaults") -> "SamplingSettings":
        if not isinstance(values, Mapping):
            raise ValueError(f"{name} must be a dict of {[f.name for f in fields(cls)]}, got {type(values).__name__}.")
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{name} has unknown keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}.")
        return cls(**values)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON values (a per-scale temperature as a list)."""
        return {key: as_json_value(value) for key, value in asdict(self).items()}

    def temperature_at(self, scale_index: int) -> float:
        """The softmax temperature of scale `scale_index` (0 the coarsest)."""
        return self.temperature[scale_index] if isinstance(self.temperature, tuple) else self.temperature

    def check_num_scales(self, patch_nums) -> "SamplingSettings":
        """These settings, after checking that a per-scale temperature has one value per scale of `patch_nums`."""
        check_temperature_scales(self.temperature, patch_nums)
        return self

    def replace(self, **overrides) -> "SamplingSettings":
        """These settings with the non-None `overrides` applied (and checked)."""
        return SamplingSettings(**{**self.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})


def check_generator(generator, batch_size: int, device) -> None:
    """None, one `torch.Generator`, or exactly one per image, on the device that samples."""
    generators = list(generator) if isinstance(generator, (list, tuple)) else [generator]
    if generator is None:
        return
    if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
        raise ValueError(
            f"Got a list of {len(generator)} generators for a batch of {batch_size} images "
            f"(labels x num_images_per_label); pass one generator or exactly {batch_size}."
        )
    for g in generators:
        if not isinstance(g, torch.Generator):
            raise ValueError(
                f"generator must be a torch.Generator, a list of them (one per image) or None, got "
                f"{type(g).__name__} {g!r}; e.g. torch.Generator(device).manual_seed(0)."
            )
        if g.device.type != torch.device(device).type:
            raise ValueError(
                f"generator is on {g.device} but the pipeline samples on {device}; create it there: "
                f"torch.Generator({str(device)!r}).manual_seed(seed)."
            )


def check_returned_f_hat(f_hat, expected: torch.Tensor, step_index: int) -> torch.Tensor:
    """The `f_hat` a `callback_on_step_end` returned: a finite tensor of the running f_hat's shape, dtype and device."""
    where = f"callback_on_step_end returned an f_hat at step {step_index} that"
    if not isinstance(f_hat, torch.Tensor):
        raise ValueError(f"{where} is a {type(f_hat).__name__}, not a torch.Tensor.")
    if f_hat.shape != expected.shape or f_hat.dtype != expected.dtype or f_hat.device != expected.device:
        raise ValueError(
            f"{where} has shape {tuple(f_hat.shape)}, {f_hat.dtype} on {f_hat.device}; it must be "
            f"{tuple(expected.shape)}, {expected.dtype} on {expected.device}, like the f_hat it was given."
        )
    if not torch.isfinite(f_hat).all():
        raise ValueError(f"{where} holds NaN or inf values.")
    return f_hat


# ---------------------------------------------------------------------------------------------------- images


def split_batch(obj, image_ndim: int = 3) -> list:
    """A list stays a list; a batched tensor or array (one more dimension than an image, as diffusers accepts)
    becomes a list of images; anything else a one-element list."""
    if isinstance(obj, list):
        return obj
    if isinstance(obj, (torch.Tensor, np.ndarray)) and obj.ndim == image_ndim + 1:
        return list(obj)
    return [obj]


def spatial_size(obj) -> tuple:
    """(H, W) of a PIL image, an (H, W[, C]) array or a (C, H, W) / (H, W) tensor."""
    if isinstance(obj, PIL.Image.Image):
        return (obj.height, obj.width)
    if isinstance(obj, np.ndarray):
        return tuple(obj.shape[:2])
    return tuple(obj.shape[-2:])


def normalize_image_input(image, name: str, rgb: bool):
    """One image or mask in the formats [`VaeImageProcessor`] reads with the right meaning: PIL images pass (as RGB
    for images), `uint8` arrays become the PIL image they came from, `uint8` tensors become floats in [0, 1], bool
    masks become floats; floats must be finite and in [0, 1] ([-1, 1] for image tensors)."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB") if rgb and image.mode != "RGB" else image
    if not isinstance(image, (np.ndarray, torch.Tensor)):
        raise ValueError(f"{name} must be a PIL image, numpy array or torch tensor (or a list of them), got "
                         f"{type(image).__name__}.")
    if image.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W), (H, W, C) for arrays or (C, H, W) for tensors, got shape "
                         f"{tuple(image.shape)}.")
    if image.dtype in (np.uint8, torch.uint8):
        if isinstance(image, np.ndarray):  # HWC or HW, 0..255: exactly the PIL image it was taken from
            array = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
            if array.ndim == 3 and array.shape[-1] not in (3, 4):
                raise ValueError(f"{name} as a uint8 array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got "
                                 f"shape {tuple(image.shape)}.")
            return normalize_image_input(PIL.Image.fromarray(np.ascontiguousarray(array)), name, rgb)
        return image.float() / 255.0
    if image.dtype in (np.bool_, torch.bool):
        return image.astype(np.float32) if isinstance(image, np.ndarray) else image.float()
    if not (isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating)) and not (
        isinstance(image, torch.Tensor) and image.is_floating_point()
    ):
        raise ValueError(f"{name} has dtype {image.dtype}; pass float values in [0, 1] or uint8 values in [0, 255].")
    values = torch.as_tensor(image)
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or inf values.")
    low = -1.0 if rgb and isinstance(image, torch.Tensor) else 0.0
    if values.numel() and (values.min() < low or values.max() > 1.0):
        raise ValueError(
            f"{name} has float values in [{float(values.min()):g}, {float(values.max()):g}]; float images must lie in "
            f"[0, 1] (tensors may use [-1, 1]). For 0..255 values pass a uint8 array or divide by 255."
        )
    return image


def normalize_images(images, name: str, rgb: bool) -> List:
    items = split_batch(images)
    if not items:
        raise ValueError(f"{name} is an empty list.")
    return [normalize_image_input(item, name, rgb) for item in items]


def check_call_options(*, max_batch_size, fast_path, return_dict, output_type, callback_on_step_end,
                       callback_on_step_end_tensor_inputs, allowed_tensor_inputs, image, mask_image):
    """The switches of a pipeline call: types, choices, and that editing has both an image and a mask."""
    if max_batch_size is not None:
        check_int("max_batch_size", max_batch_size, minimum=1)
    if fast_path is not None:
        check_bool("fast_path", fast_path)
    check_bool("return_dict", return_dict)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}.")
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise ValueError(f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}.")
    unknown = set(callback_on_step_end_tensor_inputs or ()) - set(allowed_tensor_inputs)
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {sorted(unknown)} not in {list(allowed_tensor_inputs)}.")
    if image is None and mask_image is not None:
        raise ValueError("mask_image was given without image; pass the image to edit.")
    if image is not None and mask_image is None:
        raise ValueError("Editing needs mask_image (white = regenerate) or a box (y0, x0, y1, x1); got only image.")


def keep_mask_at_scale(keep_Bhw: torch.Tensor, pn: int) -> torch.Tensor:
    """The reference's `replace_embedding` rule: bilinear resize of the keep-mask, > 0.5; the first maps (at most 3
    tokens) are always kept from the image. Returns (B, 1, pn, pn) in {0, 1}."""
    keep_B1hw = torch.nn.functional.interpolate(keep_Bhw.unsqueeze(1).float(), size=(pn, pn), mode="bilinear",
                                                align_corners=False)
    keep_B1hw = keep_B1hw.gt(0.5).float()
    if pn * pn <= 3:
        keep_B1hw.fill_(1)
    return keep_B1hw


def regenerate_mask(mask_image, images: List, resolution: int, pn: int, mask_processor) -> torch.Tensor:
    """The positions to regenerate at the finest token map, (N, 1, pn, pn) in {0, 1}, N = 1 or len(images).
    `mask_image` is diffusers' inpainting mask (white = regenerate) of the image's size or the model's, or a box
    `(y0, x0, y1, x1)` in relative coordinates."""
    if isinstance(mask_image, (tuple, list)) and len(mask_image) == 4 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in mask_image
    ):
        y0, x0, y1, x1 = (float(v) for v in mask_image)
        if not (0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1):
            raise ValueError(f"A mask_image box (y0, x0, y1, x1) needs 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1, got "
                             f"{mask_image}.")
        regen_hw = torch.zeros(pn, pn)
        regen_hw[round(y0 * pn) : round(y1 * pn), round(x0 * pn) : round(x1 * pn)] = 1
        return regen_hw[None, None].expand(len(images), 1, pn, pn)
    masks = normalize_images(mask_image, "mask_image", rgb=False)
    if len(masks) not in (1, len(images)):
        raise ValueError(f"Got {len(masks)} masks (mask_image) for {len(images)} images.")
    for m, im in zip(masks * (len(images) // len(masks)), images):
        if spatial_size(m) not in (spatial_size(im), (resolution, resolution)):
            raise ValueError(f"mask_image has size {spatial_size(m)} but the image has {spatial_size(im)} (and the "
                             f"model works at {(resolution, resolution)}); give the mask the image's size.")
    mask_B1HW = mask_processor.preprocess(masks, height=resolution, width=resolution, resize_mode="crop")
    return (torch.nn.functional.interpolate(mask_B1HW.float(), size=(pn, pn), mode="area") > 0.5).float()


def encode_edit_inputs(image, mask_image, batch_size: int, vqvae, image_processor, mask_processor, pn: int,
                       device) -> Dict[str, Any]:
    """Image -> its token maps (`image_tokens`, `batch_size` copies); mask -> `keep_Bhw`, the keep-mask at the
    finest token map (B, pn, pn), 1 = keep. Images are encoded in the VQVAE's weights' dtype."""
    images = normalize_images(image, "image", rgb=True)
    if len(images) not in (1, batch_size):
        raise ValueError(f"Got {len(images)} images (image) for a batch of {batch_size}; pass one or {batch_size}.")
    res = vqvae.config.image_size
    regen_B1hw = regenerate_mask(mask_image, images, res, pn, mask_processor)
    pixels = image_processor.preprocess(images, height=res, width=res, resize_mode="crop")
    image_tokens = vqvae.encode_tokens(pixels.to(device=device, dtype=vqvae.dtype))
    keep_Bhw = (1 - regen_B1hw[:, 0]).to(device)
    return {"image_tokens": [t.repeat_interleave(batch_size // len(images), dim=0) for t in image_tokens],
            "keep_Bhw": keep_Bhw.repeat_interleave(batch_size // keep_Bhw.shape[0], dim=0)}


__all__ = [
    "OUTPUT_TYPES",
    "SamplingSettings",
    "check_bool",
    "check_call_options",
    "encode_edit_inputs",
    "keep_mask_at_scale",
    "check_generator",
    "check_int",
    "check_returned_f_hat",
    "normalize_image_input",
    "normalize_images",
    "regenerate_mask",
    "spatial_size",
    "split_batch",
]
