"""The sampling protocol: which samples are drawn, with which settings and seeds, and where they are written.

The defaults are the protocol behind the paper's ImageNet numbers (arXiv 2404.02905, Sec. 5; the ADM evaluator of
Dhariwal & Nichol): 50 samples per class, saved as PNG (lossless; JPEG artefacts move FID),
`guidance_scale=1.5, top_k=900, top_p=0.96`, no smoothing. All settings travel together in one frozen
[`SamplingProtocol`].

Sampling is resumable and deterministic: sample `i` of class `c` is drawn with its own generator seeded from
`(seed, c, i)`, batches are fixed chunks of the class-major sample list, and PNGs already on disk are kept; a run that
is interrupted and restarted writes the same files.
"""

import dataclasses
import itertools
import json
import math
import os
import zipfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from var_hf.file_utils import atomic_write, save_image_atomically
from var_hf.pipeline_inputs import as_json_value, check_temperature, check_temperature_scales

from .images import ImagesOrPaths, iter_image_batches

# The reference protocol (VAR README / paper, Sec. 5): what `var-hf evaluate` does unless told otherwise.
REFERENCE_PROTOCOL = {
    "num_per_class": 50,
    "guidance_scale": 1.5,
    "top_k": 900,
    "top_p": 0.96,
    "temperature": 1.0,
    "more_smooth": False,
    "image_format": "png",
}
SEED_RULE = "torch.Generator per sample, seeded with numpy SeedSequence([seed, class_id, index])"


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingProtocol:
    r"""
    Every setting that decides which samples an evaluation draws. Frozen: change one with `dataclasses.replace`.

    Args:
        class_ids (`Tuple[int]`, *optional*):
            Classes to sample; `None` is every class of the model.
        num_per_class (`int`, *optional*, defaults to 50):
            Samples per class.
        guidance_scale (`float`, *optional*, defaults to 1.5), top_k (`int`, *optional*, defaults to 900),
        top_p (`float`, *optional*, defaults to 0.96), temperature (`float` or a tuple of them, *optional*, defaults
        to 1.0), more_smooth (`bool`, *optional*, defaults to `False`):
            Sampling settings passed to the pipeline (`top_k=0` / `top_p=0` disable the filters; a temperature tuple
            gives one per scale, coarse to fine). Every one is passed explicitly, so a pipeline's saved
            `sampling_defaults` never change what an evaluation draws.
        seed (`int`, *optional*, defaults to 0):
            Base of the per-sample seeds ([`sample_seed`]).
        batch_size (`int`, *optional*, defaults to 25):
            Images per pipeline call (does not change the samples).

    Example:

    ```python
    >>> from var_hf.evaluation import SamplingProtocol
    >>> protocol = SamplingProtocol(num_per_class=10, class_ids=[0, 3])
    >>> protocol.class_ids, protocol.is_reference(num_classes=10)
    ((0, 3), False)

    ```
    """

    class_ids: Optional[Tuple[int, ...]] = None
    num_per_class: int = REFERENCE_PROTOCOL["num_per_class"]
    guidance_scale: float = REFERENCE_PROTOCOL["guidance_scale"]
    top_k: int = REFERENCE_PROTOCOL["top_k"]
    top_p: float = REFERENCE_PROTOCOL["top_p"]
    temperature: Union[float, Tuple[float, ...]] = REFERENCE_PROTOCOL["temperature"]
    more_smooth: bool = REFERENCE_PROTOCOL["more_smooth"]
    seed: int = 0
    batch_size: int = 25

    def __post_init__(self):
        if self.class_ids is not None:
            ids = tuple(self.class_ids)
            if not ids or not all(_is_int(c) and c >= 0 for c in ids):
                raise ValueError(f"class_ids must be non-negative integers, got {self.class_ids!r}.")
            object.__setattr__(self, "class_ids", tuple(int(c) for c in ids))
        for name in ("num_per_class", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}.")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}.")
        for name in ("guidance_scale", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
        if not 0.0 <= self.top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1] (0 disables it), got {self.top_p!r}.")
        object.__setattr__(self, "temperature", check_temperature("temperature", self.temperature))

    def check_num_scales(self, patch_nums) -> None:
        """A per-scale temperature must have one value per scale of the pipeline that samples."""
        check_temperature_scales(self.temperature, patch_nums)

    def resolved_class_ids(self, num_classes: int) -> List[int]:
        """The classes to sample for a `num_classes`-class model (all when `class_ids` is `None`)."""
        if self.class_ids is None:
            return list(range(num_classes))
        bad = [c for c in self.class_ids if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"Class ids {bad[:5]} are out of range for a {num_classes}-class model.")
        return list(self.class_ids)

    def pipeline_kwargs(self) -> Dict[str, Any]:
        return dict(guidance_scale=self.guidance_scale, top_k=self.top_k, top_p=self.top_p,
                    temperature=self.temperature, more_smooth=self.more_smooth)

    def is_reference(self, num_classes: int) -> bool:
        """True when every setting is the paper's protocol (all classes, 50 per class, 1.5 / 900 / 0.96, no smoothing)."""
        p = REFERENCE_PROTOCOL
        all_classes = self.class_ids is None or sorted(set(self.class_ids)) == list(range(num_classes))
        settings = ("num_per_class", "guidance_scale", "top_k", "top_p", "temperature", "more_smooth")
        return all_classes and all(getattr(self, name) == p[name] for name in settings)

    def report(self, num_classes: int) -> Dict[str, Any]:
        """The `sampling` section of metrics.json (without the sample count and device, which the runner adds)."""
        all_classes = self.class_ids is None or sorted(set(self.class_ids)) == list(range(num_classes))
        return {
            "num_per_class": self.num_per_class,
            "classes": "all" if all_classes else list(self.class_ids),
            "guidance_scale": self.guidance_scale,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "temperature": as_json_value(self.temperature),
            "more_smooth": self.more_smooth,
            "seed": self.seed,
            "seed_rule": SEED_RULE,
            "batch_size": self.batch_size,
            "image_format": REFERENCE_PROTOCOL["image_format"],
            "protocol": "reference" if self.is_reference(num_classes) else "custom",
        }


def make_protocol(protocol: Optional[SamplingProtocol] = None, **settings) -> SamplingProtocol:
    """`protocol` (default: the reference protocol) with `settings` replaced; unknown names are a `TypeError`."""
    names = {f.name for f in dataclasses.fields(SamplingProtocol)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"Unknown sampling settings {unknown}; the protocol's settings are {sorted(names)}.")
    return dataclasses.replace(protocol or SamplingProtocol(), **settings)


def sample_seed(seed: int, class_id: int, index: int) -> int:
    """The seed of sample `index` of class `class_id`: independent of batch size, class list and sample count, so
    runs can be resumed or extended (50 -> 100 per class keeps the first 50)."""
    return int(np.random.SeedSequence([seed, class_id, index]).generate_state(1, dtype=np.uint64)[0])


def sample_path(sample_dir: str, class_id: int, index: int, num_classes: int = 1000) -> str:
    """`sample_dir/<class>/<index>.png`, zero-padded (an ImageFolder layout)."""
    width = max(4, len(str(num_classes - 1)))
    return os.path.join(sample_dir, f"{class_id:0{width}d}", f"{index:05d}.png")


@dataclass
class SamplingResult:
    """What [`generate_samples`] did. `num_generated` counts samples the model produced in this call (a resumed run
    that finds every file produces none); `num_batches` the pipeline calls; `model_fingerprint` identifies the weights
    that drew the samples ([`pipeline_fingerprint`])."""

    paths: List[str]
    class_labels: List[int]
    num_generated: int
    num_skipped: int
    num_batches: int
    model_fingerprint: str


def generate_samples(
    pipe, sample_dir: str, protocol: Optional[SamplingProtocol] = None, progress: bool = True, **settings
) -> SamplingResult:
    r"""
    Sample `protocol.num_per_class` PNGs for every class into `sample_dir`, skipping those already written.

    The class-major list of `(class, index)` pairs is cut into fixed chunks of `batch_size`; a chunk runs if any of
    its files is missing, and only missing files are written (atomically, so an interrupted run leaves no partial
    PNG). Every image has its own `torch.Generator` seeded with [`sample_seed`].

    Args:
        pipe (`VARPipeline`):
            The pipeline (already on its device).
        sample_dir (`str`):
            Output folder (`<class>/<index>.png`).
        protocol ([`SamplingProtocol`], *optional*):
            The settings; defaults to the reference protocol.
        progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar over images (and silence the pipeline's own).
        settings:
            Fields of [`SamplingProtocol`] to override (`num_per_class=10`, `class_ids=[0, 1]`, ...).
    """
    import torch

    protocol = make_protocol(protocol, **settings)
    num_classes = pipe.transformer.config.num_classes
    class_ids = protocol.resolved_class_ids(num_classes)
    items = [(c, i) for c in class_ids for i in range(protocol.num_per_class)]
    paths = [sample_path(sample_dir, c, i, num_classes) for c, i in items]
    size = protocol.batch_size
    chunks = [range(s, min(s + size, len(items))) for s in range(0, len(items), size)]
    todo = [chunk for chunk in chunks if not all(os.path.isfile(paths[j]) for j in chunk)]
    fingerprint = pipeline_fingerprint(pipe)
    check_or_record_settings(sample_dir, protocol, reusing=any(os.path.isfile(path) for path in paths),
                             model_fingerprint=fingerprint)

    device = pipe._execution_device
    previous_bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)  # one bar over images instead of one per call
    from tqdm.auto import tqdm

    num_generated = 0
    try:
        with tqdm(total=sum(len(c) for c in todo), desc="sampling", unit="img", disable=not progress) as bar:
            for chunk in todo:
                labels = [items[j][0] for j in chunk]
                generators = [
                    torch.Generator(device=device).manual_seed(sample_seed(protocol.seed, *items[j])) for j in chunk
                ]
                images = pipe(
                    class_labels=labels, generator=generators, num_images_per_label=1, output_type="pil",
                    **protocol.pipeline_kwargs(),
                ).images
                for j, image in zip(chunk, images):
                    if not os.path.isfile(paths[j]):
                        save_image_atomically(image, paths[j])
                        num_generated += 1
                bar.update(len(chunk))
    finally:
        pipe.set_progress_bar_config(**previous_bar_config)
    return SamplingResult(
        paths=paths,
        class_labels=[c for c, _ in items],
        num_generated=num_generated,
        num_skipped=len(items) - num_generated,
        num_batches=len(todo),
        model_fingerprint=fingerprint,
    )


SETTINGS_FILENAME = "sampling_settings.json"
# What decides a sample's pixels besides the model; class list, count and batch size may change between runs.
_DRAW_SETTINGS = ("guidance_scale", "top_k", "top_p", "temperature", "more_smooth", "seed")
_FINGERPRINT_VALUES_PER_TENSOR = 4096


def pipeline_fingerprint(pipe) -> str:
    """A short hash of the weights that draw samples (transformer and VQVAE): names, shapes, dtypes and up to 4,096
    evenly spaced values of every tensor. Two trainings, or a fine-tuned decoder, differ in nearly every value, so
    this tells them apart without reading all of a multi-GB checkpoint."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for component in ("transformer", "vqvae"):
        for name, tensor in getattr(pipe, component).state_dict().items():
            flat = tensor.detach().reshape(-1)
            stride = max(1, flat.numel() // _FINGERPRINT_VALUES_PER_TENSOR)
            values = flat[::stride][:_FINGERPRINT_VALUES_PER_TENSOR].to("cpu", torch.float32).contiguous()
            digest.update(f"{component}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]


def check_or_record_settings(sample_dir: str, protocol: SamplingProtocol, reusing: bool, model_fingerprint: str):
    """Samples already in `sample_dir` are reused only if the same weights (`model_fingerprint`, see
    [`pipeline_fingerprint`]) drew them with the same settings, as recorded in `sampling_settings.json` by the run
    that wrote them; otherwise a `ValueError` names what differs."""
    from var_hf.file_utils import write_json_atomically

    wanted = {name: as_json_value(getattr(protocol, name)) for name in _DRAW_SETTINGS}
    wanted["seed_rule"] = SEED_RULE
    wanted["model_fingerprint"] = model_fingerprint
    path = os.path.join(sample_dir, SETTINGS_FILENAME)
    if os.path.isfile(path):
        with open(path) as f:
            recorded = json.load(f)
        differing = sorted(k for k in wanted if recorded.get(k) != wanted[k])
        if differing:
            raise ValueError(
                f"{sample_dir} holds samples drawn with other settings ("
                + ", ".join(f"{k}: {recorded[k]!r} there, {wanted[k]!r} now" if k in recorded
                            else f"{k}: not recorded there, {wanted[k]!r} now" for k in differing)
                + "); use another output folder, or delete that one to draw again."
            )
        return
    if reusing:
        raise ValueError(
            f"{sample_dir} holds samples but no {SETTINGS_FILENAME} saying how they were drawn; use another output "
            "folder, or delete that one to draw again."
        )
    os.makedirs(sample_dir, exist_ok=True)
    write_json_atomically(path, wanted)


def write_samples_npz(path: str, images: ImagesOrPaths, class_labels: Sequence[int], batch_size: int = 256) -> str:
    """Write samples in the ADM evaluator's layout: `arr_0` uint8 (N, H, W, 3) and `arr_1` int64 labels (N,).

    `images` is an array or a list of image files; files are streamed into the (uncompressed, like `np.savez`) zip a
    batch at a time, so the whole set is never in memory. The file appears atomically.
    """
    labels = np.asarray(class_labels, dtype=np.int64)
    if labels.shape != (len(images),):
        raise ValueError(f"{len(images)} images but labels of shape {labels.shape}.")
    batches = iter_image_batches(images, batch_size)
    first = next(batches)
    if first.dtype != np.uint8 or first.ndim != 4 or first.shape[-1] != 3:
        raise ValueError(f"Expected uint8 (N, H, W, 3) images, got {first.dtype} {first.shape}.")
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (len(images), *first.shape[1:]),
    }
    with atomic_write(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("arr_0.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            for batch in itertools.chain([first], batches):
                if batch.shape[1:] != first.shape[1:]:
                    raise ValueError(f"Samples have different shapes: {first.shape[1:]} and {batch.shape[1:]}.")
                member.write(np.ascontiguousarray(batch, dtype=np.uint8).tobytes())
        with archive.open("arr_1.npy", "w") as member:
            np.lib.format.write_array(member, labels)
    return path


def parse_class_ids(spec: Optional[str]) -> Optional[List[int]]:
    """`"0-9,15,20-22"` -> [0, ..., 9, 15, 20, 21, 22]; `None` or `"all"` -> `None` (every class)."""
    if spec is None or spec.strip().lower() == "all":
        return None
    ids: List[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                ids.extend(range(lo, hi + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise ValueError(f"Bad class list {spec!r}: use ids and ranges like '0-9,15'.") from None
    if not ids:
        raise ValueError(f"Bad class list {spec!r}: it names no class; use ids and ranges like '0-9,15'.")
    return ids


__all__ = [
    "REFERENCE_PROTOCOL",
    "SamplingProtocol",
    "SamplingResult",
    "generate_samples",
    "make_protocol",
    "parse_class_ids",
    "sample_path",
    "sample_seed",
    "write_samples_npz",
]
