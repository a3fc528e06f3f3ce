"""The web demo: generate by class name and watch the image arrive scale by scale; edit a region of an image.

The page's handlers are plain functions of the page's values (`run_generate`, `run_edit`), so they are tested without
a browser; `build_demo` only lays them out in Gradio Blocks. Gradio is the optional extra `var_hf[demo]` and is
imported inside `build_demo`/`launch_demo`, never at module import.

Every argument error (from the page's own checks or from the pipeline) is shown in the page as one readable line;
anything unexpected is shown as its type and message, with the traceback only in the server's log.
"""

import logging as _py_logging
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import PIL.Image
import torch
from diffusers.utils import logging

from var_hf.pipeline_inputs import SamplingSettings
from var_hf.scale_strip import ScaleStripRecorder, make_scale_strip, scale_labels

logger = logging.get_logger(__name__)

UNCONDITIONAL = "unconditional"
MAX_IMAGES = 16
MAX_SEED = 2**31 - 1
# Regions the Edit tab can regenerate besides (and together with) what is painted: (y0, x0, y1, x1) boxes in [0, 1].
REGIONS: Dict[str, Tuple[Tuple[float, float, float, float], ...]] = {
    "painted only": (),
    "centre": ((0.25, 0.25, 0.75, 0.75),),
    "left half": ((0.0, 0.0, 1.0, 0.5),),
    "right half": ((0.0, 0.5, 1.0, 1.0),),
    "top half": ((0.0, 0.0, 0.5, 1.0),),
    "bottom half": ((0.5, 0.0, 1.0, 1.0),),
    "outside the centre (outpaint)": (
        (0.0, 0.0, 0.25, 1.0), (0.75, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 0.25), (0.0, 0.75, 1.0, 1.0),
    ),
}
# Small images are shown enlarged and stay crisp (pixelated); strips keep their own aspect ratio in the gallery.
CSS = """
.var-hf-pixels img { image-rendering: pixelated; }
#gen-strips .thumbnail-item { aspect-ratio: auto; height: auto; }
#gen-strips .thumbnail-lg > img { height: auto; }
"""


class DemoError(ValueError):
    """A value on the page is wrong; the message says which and how to fix it."""


# ------------------------------------------------------------------ page values -> pipeline arguments


def class_choices(pipe) -> List[Tuple[str, str]]:
    """Dropdown choices `(shown name, value)`: "unconditional" first, then every class in id order. A name shared by
    two classes (ImageNet has two "crane"s) is shown with its id."""
    id2label = pipe.id2label
    counts: Dict[str, int] = {}
    for name in id2label.values():
        counts[name] = counts.get(name, 0) + 1
    choices = [(UNCONDITIONAL, UNCONDITIONAL)]
    for class_id in sorted(id2label):
        name = id2label[class_id]
        choices.append((name if counts[name] == 1 else f"{name} ({class_id})", str(class_id)))
    return choices


def class_label_from_choice(pipe, choice) -> Optional[int]:
    """A dropdown value (a class id as text, a class name, or "unconditional") -> class id, or None (the null class)."""
    if choice is None or (isinstance(choice, str) and choice.strip() == ""):
        raise DemoError("Choose a class (or \"unconditional\").")
    if isinstance(choice, str) and choice.strip().lower() == UNCONDITIONAL:
        return None
    if isinstance(choice, str) and choice.strip().isdigit():
        choice = int(choice.strip())
    return pipe.get_label_ids(choice)[0]  # unknown names and ids raise ValueError with the closest names


def _as_int(value, name: str, low: int, high: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DemoError(f"{name} is empty; enter a whole number from {low} to {high}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a whole number from {low} to {high}, got {value!r}.") from None
    if not number.is_integer() or not low <= number <= high:
        raise DemoError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
    return int(number)


def _as_float(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DemoError(f"{name} must be a number, got {value!r}.") from None
    if not np.isfinite(number):
        raise DemoError(f"{name} must be a finite number, got {value!r}.")
    return number


def sampling_kwargs(
    pipe, class_choice, seed, guidance_scale, top_k, top_p, more_smooth, num_images=1, max_images: int = MAX_IMAGES,
) -> Dict[str, Any]:
    """The page's values -> keyword arguments of `pipe(...)`. Page-level problems (empty or fractional numbers) raise
    `DemoError`; the pipeline checks the ranges of guidance, top-k and top-p itself."""
    return dict(
        class_labels=class_label_from_choice(pipe, class_choice),
        num_images_per_label=_as_int(num_images, "Number of images", 1, max_images),
        guidance_scale=_as_float(guidance_scale, "Guidance scale"),
        top_k=_as_int(top_k, "Top-k", 0, 2**31 - 1),
        top_p=_as_float(top_p, "Top-p"),
        more_smooth=bool(more_smooth),
        generator=torch.Generator(device=pipe._execution_device).manual_seed(_as_int(seed, "Seed", 0, MAX_SEED)),
    )


def random_seed() -> int:
    return random.randint(0, MAX_SEED)


def _escape_markdown(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]<>()#+!|~])", r"\\\1", text)


def format_error(err: BaseException) -> str:
    """One readable Markdown line for the page. Argument errors show their message; anything else its type too."""
    message = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, ValueError):
        message = f"{type(err).__name__}: {message} (details in the server log)"
    return f"**Error:** {_escape_markdown(message)}"


# ------------------------------------------------------------------ the two actions


def _class_name(pipe, label: Optional[int]) -> str:
    return UNCONDITIONAL if label is None else pipe.id2label.get(label, str(label))


def _progress_hook(pipe, progress: Optional[Callable]) -> Optional[Callable[[int, int], None]]:
    if progress is None:
        return None
    names = scale_labels(pipe.scheduler.config.patch_nums)

    def on_scale(step_index: int, num_scales: Optional[int]):
        num_scales = num_scales or len(names)
        progress((step_index + 1, num_scales), desc=f"scale {step_index + 1}/{num_scales}: {names[step_index]} tokens")

    return on_scale


@dataclass
class GenerateResult:
    images: List[Tuple[PIL.Image.Image, str]] = field(default_factory=list)  # (image, caption)
    strips: List[PIL.Image.Image] = field(default_factory=list)  # one per image, in the same order
    message: str = ""


def run_generate(
    pipe, class_choice, seed, num_images, guidance_scale, top_k, top_p, more_smooth,
    progress: Optional[Callable] = None, max_images: int = MAX_IMAGES,
) -> GenerateResult:
    """Sample `num_images` images of one class and each image's scale strip. Errors come back as the message."""
    try:
        kwargs = sampling_kwargs(
            pipe, class_choice, seed, guidance_scale, top_k, top_p, more_smooth, num_images, max_images
        )
        recorder = ScaleStripRecorder(on_scale=_progress_hook(pipe, progress))
        start = time.perf_counter()
        images = pipe(
            **kwargs, callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=recorder.tensor_inputs
        ).images
        seconds = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 - the page shows one line, never a traceback
        if not isinstance(err, ValueError):
            logger.error("Generation failed", exc_info=err)
        return GenerateResult(message=format_error(err))
    names = scale_labels(pipe.scheduler.config.patch_nums)
    label = _class_name(pipe, kwargs["class_labels"])
    seed = int(float(seed))
    result = GenerateResult()
    for i, (image, estimates) in enumerate(zip(images, recorder.images_per_image())):
        caption = f"{label}, seed {seed}, image {i + 1}"
        result.images.append((image, caption))
        result.strips.append(make_scale_strip(estimates, labels=names))
    result.message = (
        f"{len(images)} image{'s' if len(images) != 1 else ''} of **{_escape_markdown(label)}** in {seconds:.1f} s: "
        f"{len(names)} scales, {' → '.join(names)} tokens."
    )
    return result


def enlarge(image: PIL.Image.Image, min_side: int = 256) -> PIL.Image.Image:
    """Nearest-neighbour enlargement by a whole factor to at least `min_side` pixels (display only)."""
    factor = max(1, -(-min_side // max(image.size)))
    return image.resize((image.width * factor, image.height * factor), PIL.Image.NEAREST) if factor > 1 else image


def _box_mask(height: int, width: int, boxes: Sequence[Tuple[float, float, float, float]]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    for y0, x0, y1, x1 in boxes:
        mask[round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)] = True
    return mask


def _to_pil(image) -> Optional[PIL.Image.Image]:
    if image is None:
        return None
    if isinstance(image, PIL.Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return PIL.Image.fromarray(image)
    if isinstance(image, (str, os.PathLike)):
        with PIL.Image.open(image) as opened:
            return opened.copy()
    raise DemoError(f"Unsupported image value of type {type(image).__name__}.")


def mask_from_editor(editor_value, region: str = "painted only") -> Tuple[PIL.Image.Image, PIL.Image.Image]:
    """Gradio's ImageEditor value -> (the uploaded image, RGB; the mask, "L", white = regenerate).

    The mask is everything painted on any layer (alpha > 0) together with the chosen `region` of `REGIONS`."""
    if region not in REGIONS:
        raise DemoError(f"Unknown region {region!r}; choose one of {list(REGIONS)}.")
    if not editor_value or _to_pil(editor_value.get("background")) is None:
        raise DemoError("Upload an image to edit first (or press \"Load an example\").")
    background = _to_pil(editor_value["background"])
    width, height = background.size
    mask = _box_mask(height, width, REGIONS[region])
    for layer in editor_value.get("layers") or []:
        layer = _to_pil(layer)
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA").getchannel("A"))
        if alpha.shape != (height, width):
            alpha = np.asarray(PIL.Image.fromarray(alpha).resize((width, height), PIL.Image.NEAREST))
        mask |= alpha > 0
    if not mask.any():
        raise DemoError("Nothing to regenerate: paint over the region to change, or choose a region.")
    return background.convert("RGB"), PIL.Image.fromarray(mask.astype(np.uint8) * 255, mode="L")


@dataclass
class EditResult:
    image: Optional[PIL.Image.Image] = None  # the input at the model's resolution, as the pipeline sees it
    mask: Optional[PIL.Image.Image] = None  # white = regenerated, at the model's resolution
    result: Optional[PIL.Image.Image] = None
    strip: Optional[PIL.Image.Image] = None
    message: str = ""


def run_edit(
    pipe, editor_value, region, class_choice, seed, guidance_scale, top_k, top_p, more_smooth,
    progress: Optional[Callable] = None,
) -> EditResult:
    """Regenerate the painted region (inpainting), the outside (outpainting) or both, conditioned on a class."""
    try:
        image, mask = mask_from_editor(editor_value, region)
        kwargs = sampling_kwargs(pipe, class_choice, seed, guidance_scale, top_k, top_p, more_smooth)
        recorder = ScaleStripRecorder(on_scale=_progress_hook(pipe, progress))
        result = pipe(
            **kwargs, image=image, mask_image=mask,
            callback_on_step_end=recorder, callback_on_step_end_tensor_inputs=recorder.tensor_inputs,
        ).images[0]
    except Exception as err:  # noqa: BLE001
        if not isinstance(err, ValueError):
            logger.error("Editing failed", exc_info=err)
        return EditResult(message=format_error(err))
    res = pipe.vqvae.config.image_size
    # The pipeline's own resize and centre crop, so what is shown is what was encoded and masked.
    seen = pipe.image_processor.postprocess(
        pipe.image_processor.preprocess(image, height=res, width=res, resize_mode="crop"), output_type="pil"
    )[0]
    mask_seen = pipe.mask_processor.postprocess(
        pipe.mask_processor.preprocess(mask, height=res, width=res, resize_mode="crop"), output_type="pil"
    )[0]
    names = scale_labels(pipe.scheduler.config.patch_nums)
    strip = make_scale_strip(recorder.images_per_image()[0], labels=names)
    label = _class_name(pipe, kwargs["class_labels"])
    covered = np.asarray(mask_seen.convert("L"), dtype=np.float32).mean() / 255
    message = (
        f"Regenerated {covered:.0%} of the image as **{_escape_markdown(label)}**, scale by scale: "
        f"{' → '.join(names)}."
    )
    return EditResult(image=seen, mask=mask_seen.convert("RGB"), result=result, strip=strip, message=message)


def _display(image: Optional[PIL.Image.Image]) -> Optional[PIL.Image.Image]:
    return None if image is None else enlarge(image)


def example_image(pipe, class_choice=None, seed: int = 0, size: int = 256) -> PIL.Image.Image:
    """A sample of the model, enlarged (nearest) to `size` pixels so it is comfortable to paint on."""
    label = class_label_from_choice(pipe, class_choice) if class_choice is not None else 0
    generator = torch.Generator(device=pipe._execution_device).manual_seed(seed)
    image = pipe(class_labels=label, generator=generator).images[0]
    return enlarge(image, size)


# ------------------------------------------------------------------ the page


def build_demo(pipe, title: str = "VAR: next-scale prediction", max_images: int = MAX_IMAGES, model_name: str = ""):
    """Gradio Blocks with a Generate and an Edit tab on `pipe`. Launch with `launch_demo` (or `.launch()`)."""
    import gradio as gr

    pipe.set_progress_bar_config(disable=True)
    choices = class_choices(pipe)
    default_class = choices[1][1] if len(choices) > 1 else UNCONDITIONAL
    vocab_size = pipe.transformer.config.vocab_size
    patch_nums = list(pipe.scheduler.config.patch_nums)
    res = pipe.vqvae.config.image_size

    # The sliders start at the model's own recommended settings (its saved `sampling_defaults`, else the
    # reference's ImageNet ones); the temperature is not on the page, so every call uses the model's.
    defaults = SamplingSettings.from_dict(pipe.sampling_defaults)

    def slider_row():
        guidance = gr.Slider(0.0, max(10.0, defaults.guidance_scale), value=defaults.guidance_scale, step=0.1,
                             label="Guidance scale", info="0 disables guidance")
        top_k = gr.Slider(0, vocab_size, value=min(defaults.top_k, vocab_size), step=1, label="Top-k",
                          info="0 disables")
        top_p = gr.Slider(0.0, 1.0, value=defaults.top_p, step=0.01, label="Top-p", info="0 disables")
        smooth = gr.Checkbox(value=defaults.more_smooth, label="more_smooth",
                             info="Gumbel-softmax smoothing (visual quality)")
        return guidance, top_k, top_p, smooth

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            f"# {title}\n"
            "VAR draws an image coarse to fine, one whole token map per step: "
            f"{' → '.join(scale_labels(patch_nums))} "
            f"tokens, {res}x{res} pixels{f' ({model_name})' if model_name else ''}. The scale strip under each image "
            f"shows the image decoded after each scale."
        )
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    class_box = gr.Dropdown(choices, value=default_class, label="Class", filterable=True,
                                            elem_id="gen-class")
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                         elem_id="gen-seed")
                        seed_button = gr.Button("Random seed", size="sm", elem_id="gen-random-seed")
                    num_images = gr.Slider(1, max_images, value=4, step=1, label="Number of images", elem_id="gen-num")
                    guidance, top_k, top_p, smooth = slider_row()
                    generate_button = gr.Button("Generate", variant="primary", elem_id="gen-button")
                with gr.Column(scale=2):
                    status = gr.Markdown(elem_id="gen-status")
                    gallery = gr.Gallery(label="Images", columns=4, height="auto", object_fit="contain",
                                         elem_id="gen-gallery",
                                         elem_classes=["var-hf-pixels"], format="png")
                    strips = gr.Gallery(label="Scale strips, coarse to fine (in the order of the images)", columns=2,
                                        height="auto", object_fit="contain",
                                        elem_id="gen-strips", format="png")

        with gr.Tab("Edit", id="edit"):
            with gr.Row():
                with gr.Column(scale=1):
                    editor = gr.ImageEditor(
                        label="Image: paint the region to regenerate", type="pil", image_mode="RGBA",
                        sources=("upload", "clipboard"), brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                        layers=False, format="png", elem_id="edit-editor",
                    )
                    example_button = gr.Button("Load an example", size="sm", elem_id="edit-example")
                    region = gr.Radio(list(REGIONS), value="painted only", label="Also regenerate",
                                      elem_id="edit-region")
                    edit_class = gr.Dropdown(choices, value=UNCONDITIONAL, label="Class", filterable=True,
                                             elem_id="edit-class",
                                             info="unconditional: inpaint/outpaint; a class: class-conditional edit")
                    edit_seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                                          elem_id="edit-seed")
                    e_guidance, e_top_k, e_top_p, e_smooth = slider_row()
                    edit_button = gr.Button("Edit", variant="primary", elem_id="edit-button")
                with gr.Column(scale=2):
                    edit_status = gr.Markdown(elem_id="edit-status")
                    with gr.Row():
                        seen = gr.Image(label="Input, as the model sees it (enlarged)", interactive=False,
                                        elem_id="edit-input",
                                        elem_classes=["var-hf-pixels"], format="png")
                        mask_view = gr.Image(label="Mask, white = regenerated (enlarged)", interactive=False,
                                             elem_id="edit-mask",
                                             elem_classes=["var-hf-pixels"], format="png")
                        result_view = gr.Image(label="Result (enlarged)", interactive=False, elem_id="edit-result",
                                               elem_classes=["var-hf-pixels"], format="png")
                    edit_strip = gr.Image(label="Scale strip (coarse to fine)", interactive=False, elem_id="edit-strip",
                                          format="png")

        def on_generate(class_choice, seed_value, n, g, k, p, s, progress=gr.Progress()):
            out = run_generate(pipe, class_choice, seed_value, n, g, k, p, s, progress=progress, max_images=max_images)
            return out.images, out.strips, out.message

        def on_edit(editor_value, region_name, class_choice, seed_value, g, k, p, s, progress=gr.Progress()):
            out = run_edit(pipe, editor_value, region_name, class_choice, seed_value, g, k, p, s, progress=progress)
            return _display(out.image), _display(out.mask), _display(out.result), out.strip, out.message

        def on_example(class_choice):
            try:
                choice = class_choice if class_choice != UNCONDITIONAL else default_class
                return {"background": example_image(pipe, choice), "layers": [], "composite": None}, ""
            except Exception as err:  # noqa: BLE001
                return None, format_error(err)

        seed_button.click(random_seed, outputs=seed, queue=False)
        generate_button.click(
            on_generate, inputs=[class_box, seed, num_images, guidance, top_k, top_p, smooth],
            outputs=[gallery, strips, status], concurrency_limit=1,
        )
        example_button.click(on_example, inputs=edit_class, outputs=[editor, edit_status], concurrency_limit=1)
        edit_button.click(
            on_edit, inputs=[editor, region, edit_class, edit_seed, e_guidance, e_top_k, e_top_p, e_smooth],
            outputs=[seen, mask_view, result_view, edit_strip, edit_status], concurrency_limit=1,
        )
    return demo


def load_pipeline(model: str, device: Optional[str] = None):
    """`VARPipeline.from_pretrained(model)` on `device` (CUDA when present)."""
    from var_hf import VARPipeline
    from var_hf.file_utils import default_device

    pipe = VARPipeline.from_pretrained(model)
    return pipe.to(default_device(device))


@dataclass
class RunningDemo:
    demo: Any
    url: str
    temp_dir: Optional[str]

    def close(self):
        self.demo.close()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def prepare_gradio_environment(temp_dir: Optional[str] = None) -> Optional[str]:
    """Keep Gradio local and inside one temporary folder: no analytics or update checks, and its file cache (uploads,
    images sent to the page) and matplotlib's font cache in `temp_dir` (a new temporary folder unless given or
    `GRADIO_TEMP_DIR` is already set). Call before importing gradio. Returns the folder this call created (to remove
    at exit), else None."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    created = None
    if temp_dir is None and not os.environ.get("GRADIO_TEMP_DIR"):
        temp_dir = created = tempfile.mkdtemp(prefix="var-hf-demo-")
    if temp_dir is not None:
        os.environ["GRADIO_TEMP_DIR"] = os.path.abspath(temp_dir)
    # Gradio imports matplotlib, which would otherwise write its font cache under ~/.cache.
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(os.environ["GRADIO_TEMP_DIR"], "matplotlib"))
    return created


def _model_name(model: Optional[str]) -> str:
    if model is None:
        return ""
    from var_hf import DEFAULT_MODEL

    if os.path.isdir(model):
        if os.path.samefile(model, DEFAULT_MODEL):
            return "the bundled Fashion-MNIST model"
        return os.path.basename(os.path.normpath(model))
    return model


def serve(
    demo, host: Optional[str] = None, port: Optional[int] = None, share: bool = False, block: bool = True,
    temp_dir: Optional[str] = None, quiet: bool = False,
) -> RunningDemo:
    """Serve a `build_demo` page. `host`/`port` default to Gradio's (`GRADIO_SERVER_NAME`/`GRADIO_SERVER_PORT`, else
    127.0.0.1:7860), which is what Hugging Face Spaces set. With `block=False` it returns while the server runs;
    `.close()` the result. `temp_dir` (from `prepare_gradio_environment`) is removed when the server closes."""
    _py_logging.getLogger("httpx").setLevel(_py_logging.WARNING)  # one line per request otherwise
    demo.queue(default_concurrency_limit=1)
    try:
        _, url, share_url = demo.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True, css=CSS, ssr_mode=False,
            quiet=quiet, footer_links=[],
        )
    except BaseException:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    running = RunningDemo(demo=demo, url=share_url or url, temp_dir=temp_dir)
    if block:
        block_until_stopped(running)
    return running


def block_until_stopped(running: RunningDemo):
    """Serve until Ctrl+C or SIGTERM (`kill`, `timeout`, container stops), then close the server and remove its
    temporary folder. SIGTERM is turned into the KeyboardInterrupt Gradio already handles (main thread only)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        def interrupt(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        running.demo.block_thread()
    finally:
        running.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def launch_demo(
    model: Optional[str] = None, host: Optional[str] = None, port: Optional[int] = None, share: bool = False,
    device: Optional[str] = None, block: bool = True, max_images: int = MAX_IMAGES, quiet: bool = False,
) -> RunningDemo:
    """Load the pipeline (the bundled default model unless `model` is given), build the page and `serve` it, with
    Gradio's files in a new temporary folder that is removed when the server closes."""
    created = prepare_gradio_environment()
    try:
        from var_hf import DEFAULT_MODEL

        model = model or DEFAULT_MODEL
        demo = build_demo(load_pipeline(model, device), max_images=max_images, model_name=_model_name(model))
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return serve(demo, host=host, port=port, share=share, block=block, temp_dir=created, quiet=quiet)


__all__ = [
    "CSS",
    "DemoError",
    "EditResult",
    "GenerateResult",
    "MAX_IMAGES",
    "REGIONS",
    "RunningDemo",
    "UNCONDITIONAL",
    "block_until_stopped",
    "build_demo",
    "class_choices",
    "class_label_from_choice",
    "enlarge",
    "example_image",
    "format_error",
    "launch_demo",
    "load_pipeline",
    "mask_from_editor",
    "prepare_gradio_environment",
    "random_seed",
    "run_edit",
    "run_generate",
    "sampling_kwargs",
    "serve",
]
