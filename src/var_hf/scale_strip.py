"""Scale strips: the image estimate after each scale, coarse to fine, laid out left to right.

VAR predicts a whole token map per step (1x1, 2x2, ... tokens). After scale k the running sum `f_hat` of the
upsampled code maps decodes to an image that already has the final layout at the coarse scales' resolution; the last
estimate is the output image itself. `ScaleStripRecorder` collects these estimates as the pipeline's
`callback_on_step_end` (diffusers' contract: `callback(pipe, step_index, timestep, callback_kwargs) -> dict`),
and `make_scale_strip` draws one image's estimates as a strip.

Example:

```python
>>> import torch
>>> from var_hf import VARPipeline, DEFAULT_MODEL
>>> from var_hf.scale_strip import ScaleStripRecorder, make_scale_strip, scale_labels
>>> pipe = VARPipeline.from_pretrained(DEFAULT_MODEL)
>>> recorder = ScaleStripRecorder()
>>> out = pipe(class_labels=["Sneaker", "Bag"], generator=torch.Generator().manual_seed(0),
...            callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=recorder.tensor_inputs)
>>> estimates = recorder.images_per_image()       # per image: one PIL image per scale, coarse to fine
>>> len(estimates), len(estimates[0]) == len(pipe.scheduler.config.patch_nums)
(2, True)
>>> strip = make_scale_strip(estimates[0], labels=scale_labels(pipe.scheduler.config.patch_nums))
>>> strip.width > strip.height
True

```
"""

from typing import Callable, Dict, List, Optional, Sequence

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch
from diffusers.image_processor import VaeImageProcessor


def scale_labels(patch_nums: Sequence[int]) -> List[str]:
    """`(1, 2, 3)` -> `["1x1", "2x2", "3x3"]`: the token-map size each estimate adds."""
    return [f"{int(pn)}x{int(pn)}" for pn in patch_nums]


def tensor_to_pil(images_B3HW: torch.Tensor) -> List[PIL.Image.Image]:
    """Images in [0, 1], (B, 3, H, W) -> PIL images, rounded as the pipeline's own `output_type="pil"` is
    (diffusers' `VaeImageProcessor.pt_to_numpy` then `numpy_to_pil`), so an estimate and an output compare exactly."""
    return VaeImageProcessor.numpy_to_pil(VaeImageProcessor.pt_to_numpy(images_B3HW.detach().float().cpu()))


class ScaleStripRecorder:
    """Records each scale's image estimate during a `VARPipeline` call.

    Pass it as `callback_on_step_end` with `callback_on_step_end_tensor_inputs=recorder.tensor_inputs` (`["f_hat"]`):
    after each scale the running `f_hat` is decoded with `pipe.decode_latents`, the decoder the pipeline uses for its
    output, so the last estimate is the output image. If the call also asks for `"image_estimate"` (the pipeline's own
    decoded preview), that is used instead of decoding twice. It returns `{}`: nothing of the pipeline's state is
    replaced.

    When the pipeline samples in several chunks (`max_batch_size`), the callback runs once per scale for every chunk;
    step index 0 starts a new chunk, and the chunks are joined in batch order. Use one recorder per call (or `reset()`).

    Args:
        on_scale (`Callable[[int, int], None]`, *optional*):
            Called as `on_scale(step_index, num_scales)` after each scale is recorded (progress bars).
        keep_on_cpu (`bool`, *optional*, defaults to `True`):
            Move the estimates to the CPU as they arrive, so GPU memory does not grow with the number of scales.
    """

    tensor_inputs = ("f_hat",)

    def __init__(self, on_scale: Optional[Callable[[int, int], None]] = None, keep_on_cpu: bool = True):
        self.on_scale = on_scale
        self.keep_on_cpu = keep_on_cpu
        self._chunks: List[List[torch.Tensor]] = []

    def reset(self):
        self._chunks = []

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: Dict[str, torch.Tensor]) -> Dict:
        """Record this scale's estimate (diffusers' callback signature; `timestep` is the scale index)."""
        if "image_estimate" in callback_kwargs:
            images_B3HW = callback_kwargs["image_estimate"]
        elif "f_hat" in callback_kwargs:
            images_B3HW = pipe.decode_latents(callback_kwargs["f_hat"])
        else:
            raise ValueError(
                "ScaleStripRecorder needs the running f_hat: call the pipeline with "
                "callback_on_step_end_tensor_inputs=recorder.tensor_inputs (['f_hat'])."
            )
        if step_index == 0 or not self._chunks:
            self._chunks.append([])
        if len(self._chunks[-1]) != step_index:
            raise RuntimeError(
                f"ScaleStripRecorder got scale {step_index} after {len(self._chunks[-1])} scales of this chunk; "
                f"use one recorder per pipeline call."
            )
        images_B3HW = images_B3HW.detach().float()
        self._chunks[-1].append(images_B3HW.cpu() if self.keep_on_cpu else images_B3HW.clone())
        if self.on_scale is not None:
            num_scales = getattr(getattr(pipe, "scheduler", None), "num_scales", None)
            self.on_scale(step_index, num_scales)
        return {}

    @property
    def num_scales(self) -> int:
        return len(self._chunks[0]) if self._chunks else 0

    def estimates(self) -> List[torch.Tensor]:
        """One tensor per scale, coarse to fine: (B, 3, H, W) in [0, 1], the chunks joined in batch order."""
        if not self._chunks:
            raise ValueError("ScaleStripRecorder has recorded nothing; pass it as the pipeline's callback_on_step_end.")
        lengths = {len(chunk) for chunk in self._chunks}
        if len(lengths) != 1:
            raise ValueError(
                f"The recorded chunks hold different numbers of scales ({sorted(lengths)}); the call was cut short."
            )
        return [torch.cat(per_scale, dim=0) for per_scale in zip(*self._chunks)]

    def images_per_image(self) -> List[List[PIL.Image.Image]]:
        """For each image of the batch, its estimates as PIL images, coarse to fine (the last is the output)."""
        per_scale = [tensor_to_pil(images_B3HW) for images_B3HW in self.estimates()]
        return [list(images) for images in zip(*per_scale)]

    def strips(self, labels: Optional[Sequence[str]] = None, **strip_kwargs) -> List[PIL.Image.Image]:
        """One `make_scale_strip` per image of the batch."""
        return [make_scale_strip(images, labels=labels, **strip_kwargs) for images in self.images_per_image()]


def _label_font(size: int):
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return PIL.ImageFont.load_default()


def make_scale_strip(
    images_per_scale: Sequence[PIL.Image.Image],
    labels: Optional[Sequence[str]] = None,
    tile_size: Optional[int] = None,
    padding: int = 4,
    background=(255, 255, 255),
    text_color=(0, 0, 0),
) -> PIL.Image.Image:
    """Lay one image's per-scale estimates left to right, coarse to fine.

    Args:
        images_per_scale (`List[PIL.Image.Image]`): the estimates, coarse to fine.
        labels (`List[str]`, *optional*): a caption under each tile, e.g. `scale_labels(patch_nums)`; none by default.
        tile_size (`int`, *optional*): every estimate is resized (nearest, so token blocks stay sharp) to a square
            tile of this side. Defaults to the largest estimate's side, at least 64 pixels.
        padding (`int`, *optional*, defaults to 4): pixels between and around the tiles.

    Returns:
        `PIL.Image.Image`: an RGB image `K * (tile + padding) + padding` pixels wide.
    """
    images = list(images_per_scale)
    if not images:
        raise ValueError("make_scale_strip needs at least one image (one estimate per scale).")
    if not all(isinstance(im, PIL.Image.Image) for im in images):
        kinds = sorted({type(im).__name__ for im in images})
        raise ValueError(
            f"make_scale_strip takes PIL images (e.g. ScaleStripRecorder.images_per_image()), got {kinds}."
        )
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"Got {len(labels)} labels for {len(images)} estimates; pass one label per scale or none.")
    if tile_size is None:
        tile_size = max(64, *(max(im.size) for im in images))
    if not isinstance(tile_size, int) or tile_size < 1:
        raise ValueError(f"tile_size must be an int >= 1, got {tile_size!r}.")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}.")

    font = _label_font(max(10, tile_size // 6)) if labels is not None else None
    label_height = 0
    if font is not None:
        measure = PIL.ImageDraw.Draw(PIL.Image.new("RGB", (1, 1)))
        label_height = max(measure.textbbox((0, 0), text, font=font)[3] for text in labels)
        label_height += padding
    width = len(images) * (tile_size + padding) + padding
    height = tile_size + 2 * padding + label_height
    strip = PIL.Image.new("RGB", (width, height), background)
    draw = PIL.ImageDraw.Draw(strip)
    for k, image in enumerate(images):
        x = padding + k * (tile_size + padding)
        strip.paste(image.convert("RGB").resize((tile_size, tile_size), PIL.Image.NEAREST), (x, padding))
        if font is not None:
            text_width = draw.textlength(labels[k], font=font)
            position = (x + (tile_size - text_width) / 2, 2 * padding + tile_size)
            draw.text(position, labels[k], fill=text_color, font=font)
    return strip


__all__ = ["ScaleStripRecorder", "make_scale_strip", "scale_labels", "tensor_to_pil"]
