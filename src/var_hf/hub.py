"""Publishing VAR pipelines on the Hugging Face Hub: model cards and uploads.

[`write_model_card`] writes `README.md` (a `huggingface_hub.ModelCard`: license, library, tags, base model, datasets,
evaluation results as model-index entries from the JSON that `var-hf evaluate` writes, a usage snippet) and a sample
grid beside it. [`push_pipeline`] creates the repo and uploads a saved pipeline folder with `HfApi`, turning
huggingface_hub's HTTP and connection errors into a [`HubPushError`] that names the repo and the likely cause.

Everything is checked before anything is written: the repo id, the folder, the card's inputs (an empty license is
refused, empty tags and datasets are dropped with a warning, a non-finite metric is never published).

Loading back needs nothing from this module: `VARPipeline.from_pretrained("user/repo")` fetches a snapshot.
"""

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, HTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id
from transformers.utils import logging

from var_hf.file_utils import save_image_atomically, write_text_atomically

logger = logging.get_logger(__name__)

LIBRARY_NAME = "var_hf"
DEFAULT_TAGS = ("diffusers", "image-generation", "var", "class-conditional", "next-scale-prediction")
SAMPLE_GRID_FILENAME = "sample_grid.png"
# Evaluation outputs and scratch files never belong in a model repo.
UPLOAD_IGNORE_PATTERNS = ("samples/**", "*/samples/**", "*.npz", "*.tmp", "*.lock", ".cache/**", "__pycache__/**")
# Classes shown on ImageNet cards (VAR README's demo picks): golden retriever, otter, lesser panda, geyser, macaw,
# valley, balloon, arctic fox.
IMAGENET_GRID_CLASSES = (207, 360, 387, 974, 88, 979, 417, 279)
PAPER_URL = "https://arxiv.org/abs/2404.02905"
VAR_CITATION = """@inproceedings{tian2024var,
  title={Visual Autoregressive Modeling: Scalable Image Generation via Next-Scale Prediction},
  author={Tian, Keyu and Jiang, Yi and Yuan, Zehuan and Peng, Bingyue and Wang, Liwei},
  booktitle={Advances in Neural Information Processing Systems},
  year={2024}
}"""
# metrics.json key -> (model-index metric type, readable name)
METRIC_TYPES = {
    "fid": ("fid", "FID"),
    "sfid": ("sfid", "sFID"),
    "inception_score": ("inception_score", "Inception Score"),
    "precision": ("precision", "Precision"),
    "recall": ("recall", "Recall"),
    "class_accuracy": ("accuracy", "Class accuracy"),
}


class HubPushError(RuntimeError):
    """An upload to the Hub failed; the message names the repo, the step and the cause."""


# ----------------------------------------------------------------------------------------------------------------------
# Model cards
# ----------------------------------------------------------------------------------------------------------------------


def eval_results_from_metrics(
    metrics_report: Union[str, Dict[str, Any]],
    dataset_type: Optional[str] = None,
    dataset_name: Optional[str] = None,
) -> List[EvalResult]:
    r"""
    Model-index entries (`huggingface_hub.EvalResult`) from the metrics JSON of `var-hf evaluate`.

    Args:
        metrics_report (`str` or `dict`):
            Path of `metrics.json`, or its content.
        dataset_type (`str`, *optional*):
            Hub id of the evaluation dataset (e.g. `"imagenet-1k"`); defaults to the reference's Hub id when it was
            one, `"imagenet-1k"` for a 1000-class model, else `"custom"`.
        dataset_name (`str`, *optional*):
            Readable dataset name; defaults to one built from the reference.

    Every entry carries the sampling settings in `metric_args` and the feature extractor in `metric_config`, so a
    number never stands without the protocol that produced it.
    """
    report = read_metrics_report(metrics_report)
    reference = report.get("reference") or {}
    sampling = report.get("sampling") or {}
    extractor = (report.get("feature_extractor") or {}).get("name", "unknown")
    model = report.get("model") or {}
    if dataset_type is None:
        if reference.get("kind") == "hub-dataset":
            dataset_type = reference["source"]
        elif model.get("num_classes") == 1000:
            dataset_type = "imagenet-1k"
        else:
            dataset_type = "custom"
    if dataset_name is None:
        source = os.path.basename(str(reference.get("source", "reference")).rstrip("/")) or "reference"
        size = model.get("image_size")
        dataset_name = f"{dataset_type} {size}x{size} (reference: {source})" if size else f"{dataset_type} ({source})"
    args = {k: sampling[k] for k in ("num_samples", "num_per_class", "guidance_scale", "top_k", "top_p", "temperature",
                                     "seed") if k in sampling}
    results = []
    for key, value in publishable_metrics(report).items():
        metric_type, readable = METRIC_TYPES[key]
        space = "InceptionV3" if extractor.startswith("inception") else extractor
        results.append(
            EvalResult(
                task_type="image-generation",
                task_name="Class-conditional image generation",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=reference.get("split"),
                metric_type=metric_type,
                metric_value=round(value, 4),
                metric_name=f"{readable} ({space} features)" if key in ("fid", "sfid", "precision", "recall") else readable,
                metric_config=extractor,
                metric_args=args or None,
            )
        )
    return results


def _read_json(path: str, fix: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); {fix}.") from None


def read_metrics_report(metrics_report: Union[str, Dict[str, Any]]) -> Dict[str, Any]:
    """The metrics JSON of `var-hf evaluate` (a path, its folder, or its content), checked to be a JSON object."""
    if isinstance(metrics_report, dict):
        report = metrics_report
    else:
        path = os.fspath(metrics_report)
        path = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"metrics file {path}: no such file (pass the metrics.json of var-hf evaluate).")
        report = _read_json(path, "pass the metrics.json of var-hf evaluate")
    if not isinstance(report, dict) or not isinstance(report.get("metrics", {}), dict):
        raise ValueError("metrics: expected the JSON object of var-hf evaluate, with a 'metrics' object inside.")
    return report


def publishable_metrics(report: Dict[str, Any]) -> Dict[str, float]:
    """The report's known metrics that are finite numbers; any other value is left out of the card with a warning."""
    metrics = {}
    for key, value in (report.get("metrics") or {}).items():
        if key not in METRIC_TYPES or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            logger.warning(f"Metric {key!r} is {value!r}, not a finite number: it is left out of the model card.")
            continue
        metrics[key] = float(value)
    return metrics


def check_card_inputs(
    license: str, tags: Optional[Sequence[str]] = None, datasets: Optional[Sequence[str]] = None
) -> Dict[str, Any]:
    """Check a card's license, tags and datasets; returns them cleaned (stripped, empty entries dropped with a warning).

    Raises `ValueError` for an empty or non-string license, or a tag/dataset that is not a string.
    """
    if not isinstance(license, str) or not license.strip():
        raise ValueError(f"license must be a license id such as 'mit' or 'apache-2.0', got {license!r}.")

    def clean(values, what):
        if values is None:
            return None
        values = [values] if isinstance(values, str) else list(values)
        kept = []
        for value in values:
            if not isinstance(value, str):
                raise ValueError(f"{what} must be strings, got {value!r}.")
            if not value.strip():
                logger.warning(f"Dropping an empty {what[:-1]} from the model card.")
                continue
            kept.append(value.strip())
        return kept or None

    return dict(license=license.strip(), tags=clean(tags, "tags"), datasets=clean(datasets, "datasets"))


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub model id (`name` or `namespace/name`), else a `ValueError` saying why."""
    try:
        validate_repo_id(repo_id)
    except ValueError as err:  # huggingface_hub's HFValidationError
        raise ValueError(f"{repo_id!r} is not a valid Hub repo id ({err}). Use 'your-name/model-name'.") from None
    return repo_id


def _load_pipeline(folder: str):
    from .pipelines import VARPipeline

    return VARPipeline.from_pretrained(folder)


def make_sample_grid(pipe, class_ids: Sequence[int], seed: int = 0, min_tile: int = 128, **call_kwargs):
    """One sample per class in a row-major grid (at most 4 per row), tiles upscaled (nearest) to at least
    `min_tile` pixels so small models stay visible. Returns a PIL image."""
    import torch
    from diffusers.utils import make_image_grid

    generators = [torch.Generator(device=pipe._execution_device).manual_seed(seed + i) for i in range(len(class_ids))]
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)  # a card's grid is a side job: no bar at the end of training
    try:
        images = pipe(class_labels=list(class_ids), generator=generators, output_type="pil", **call_kwargs).images
    finally:
        pipe._progress_bar_config = bar_config  # the caller's pipeline keeps its own setting
    side = images[0].width
    if side < min_tile:
        scale = -(-min_tile // side)
        images = [im.resize((side * scale, side * scale), resample=0) for im in images]  # 0 = NEAREST
    cols = min(4, len(images))
    rows = -(-len(images) // cols)
    images += [images[0].point(lambda _: 255)] * (rows * cols - len(images))  # white filler tiles
    return make_image_grid(images, rows=rows, cols=cols)


def write_model_card(
    pipeline_or_folder,
    folder: Optional[str] = None,
    repo_id: Optional[str] = None,
    license: str = "mit",
    base_model: Optional[str] = None,
    datasets: Optional[Sequence[str]] = None,
    metrics: Optional[Union[str, Dict[str, Any]]] = None,
    eval_dataset_type: Optional[str] = None,
    eval_dataset_name: Optional[str] = None,
    sample_grid: bool = True,
    grid_classes: Optional[Sequence[int]] = None,
    grid_seed: int = 0,
    model_name: Optional[str] = None,
    tags: Optional[Sequence[str]] = None,
    description: Optional[str] = None,
) -> ModelCard:
    r"""
    Write `README.md` (and `sample_grid.png`) for a saved VAR pipeline.

    Args:
        pipeline_or_folder (`VARPipeline` or `str`):
            The pipeline, or the folder it was saved to (loaded to draw the grid and read the configs).
        folder (`str`, *optional*):
            Where to write; defaults to `pipeline_or_folder` when that is a folder.
        repo_id (`str`, *optional*):
            Hub id used in the usage snippet and as the model-index name (defaults to the folder name).
        license (`str`, *optional*, defaults to `"mit"`):
            License id (VAR's weights and code are MIT).
        base_model (`str`, *optional*):
            The model this was converted or fine-tuned from (e.g. `"FoundationVision/var"`).
        datasets (`Sequence[str]`, *optional*):
            Training datasets (Hub ids, e.g. `["ILSVRC/imagenet-1k"]`).
        metrics (`str` or `dict`, *optional*):
            `metrics.json` of `var-hf evaluate` (or its folder, or its content); becomes model-index entries and a
            table.
        eval_dataset_type, eval_dataset_name (`str`, *optional*):
            See [`eval_results_from_metrics`].
        sample_grid (`bool`, *optional*, defaults to `True`):
            Draw one sample per class (seeded) into `sample_grid.png` and show it on the card.
        grid_classes (`Sequence[int]`, *optional*):
            Classes of the grid; default: eight ImageNet favourites for 1000 classes, else the first eight.
        grid_seed (`int`, *optional*, defaults to 0):
            Seed of the grid (image i uses `grid_seed + i`).
        model_name (`str`, *optional*):
            Title; defaults to the repo or folder name.
        tags (`Sequence[str]`, *optional*):
            Extra tags.
        description (`str`, *optional*):
            A paragraph placed under the title.

    Returns:
        The `huggingface_hub.ModelCard` that was saved.

    Example:

    ```python
    >>> from var_hf import DEFAULT_MODEL
    >>> from var_hf.hub import write_model_card
    >>> import shutil, tempfile
    >>> folder = shutil.copytree(DEFAULT_MODEL, tempfile.mkdtemp() + "/var-fashion")
    >>> card = write_model_card(folder, repo_id="me/var-fashion-mnist", datasets=["zalando-datasets/fashion_mnist"])
    >>> card.data.library_name
    'var_hf'

    ```
    """
    pipe = None if isinstance(pipeline_or_folder, (str, os.PathLike)) else pipeline_or_folder
    if folder is None:
        if pipe is not None:
            raise ValueError("Give the folder to write the card to (the pipeline's save_pretrained folder).")
        folder = os.fspath(pipeline_or_folder)
    # Every input is checked before the first file is written.
    cleaned = check_card_inputs(license, tags, datasets)
    license, tags, datasets = cleaned["license"], cleaned["tags"], cleaned["datasets"]
    if repo_id is not None:
        check_repo_id(repo_id)
    report = read_metrics_report(metrics) if metrics is not None else None
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{folder} is a file; pass the pipeline folder the card belongs to.")
    if pipe is None:
        pipe = _load_pipeline(os.fspath(pipeline_or_folder))
    os.makedirs(folder, exist_ok=True)

    config = pipe.transformer.config
    num_classes = config.num_classes
    id2label = pipe.id2label if hasattr(pipe, "id2label") else {i: str(i) for i in range(num_classes)}
    name = model_name or (repo_id or os.path.basename(os.path.abspath(folder))).split("/")[-1]
    repo_ref = repo_id or "REPO_ID"
    if grid_classes is None:
        grid_classes = IMAGENET_GRID_CLASSES if num_classes == 1000 else tuple(range(min(8, num_classes)))
    grid_classes = [int(c) for c in grid_classes]

    eval_results = eval_results_from_metrics(report, eval_dataset_type, eval_dataset_name) if report else None
    card_data = ModelCardData(
        license=license,
        library_name=LIBRARY_NAME,
        tags=list(dict.fromkeys([*DEFAULT_TAGS, *(tags or ())])),
        base_model=base_model,
        datasets=list(datasets) if datasets else None,
        model_name=name,
        eval_results=eval_results or None,
    )

    grid_line = ""
    if sample_grid:
        grid = make_sample_grid(pipe, grid_classes, seed=grid_seed)
        save_image_atomically(grid, os.path.join(folder, SAMPLE_GRID_FILENAME))
        names = ", ".join(f"{c} ({id2label.get(c, c)})" for c in grid_classes)
        grid_line = (
            f"![Samples, one per class]({SAMPLE_GRID_FILENAME})\n\n"
            f"*Classes {names}; seeds {grid_seed}..{grid_seed + len(grid_classes) - 1}, pipeline defaults "
            f"({_format_settings(pipe)}).*\n\n"
        )

    body = _card_body(
        name, repo_ref, pipe, grid_classes[0] if grid_classes else 0, id2label, grid_line, report, base_model,
        datasets, description,
    )
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
    write_text_atomically(os.path.join(folder, "README.md"), str(card))
    return card


def _card_body(name, repo_ref, pipe, example_class, id2label, grid_line, report, base_model, datasets, description):
    config, vq_config = pipe.transformer.config, pipe.vqvae.config
    num_params = sum(p.numel() for p in pipe.transformer.parameters())
    lines = [f"# {name}", ""]
    lines += [
        description
        or f"A class-conditional [VAR]({PAPER_URL}) (Visual AutoRegressive modeling: next-scale prediction) image "
        f"generator packaged for `var_hf` as a diffusers pipeline: a multi-scale "
        f"VQVAE, a {config.depth}-layer VAR transformer and a scale scheduler.",
        "",
    ]
    if base_model:
        lines += [f"Converted from [`{base_model}`](https://huggingface.co/{base_model}) with `var-hf-convert`.", ""]
    if grid_line:
        lines += [grid_line.rstrip(), ""]
    lines += [
        "## Usage",
        "",
        "With the `var_hf` package installed:",
        "",
        "```python",
        "from var_hf import VARPipeline",
        "",
        f'pipe = VARPipeline.from_pretrained("{repo_ref}")',
        f"image = pipe(class_labels=[{example_class}]).images[0]  # sampling settings: the model's defaults below",
        'image.save("sample.png")',
        "```",
        "",
        f"`class_labels` takes class ids or names (`pipe.labels`); class {example_class} is "
        f"`{id2label.get(example_class, example_class)}`.",
        "",
        "## Model",
        "",
        "| | |",
        "| --- | --- |",
        f"| Resolution | {vq_config.image_size} x {vq_config.image_size} |",
        f"| Classes | {config.num_classes} |",
        f"| Transformer | depth {config.depth}, width {config.embed_dim}, {config.num_heads} heads, "
        f"{_format_count(num_params)} parameters |",
        f"| Token maps (patch_nums) | {', '.join(str(p) for p in config.patch_nums)} |",
        f"| Codebook | {vq_config.vocab_size} codes of dimension {vq_config.vq_embed_dim} |",
        f"| Sampling defaults | {_format_settings(pipe)} |",
    ]
    if datasets:
        lines.append(f"| Training data | {', '.join(datasets)} |")
    lines.append("")
    if report:
        lines += _metrics_section(report)
    lines += ["## Citation", "", "```bibtex", VAR_CITATION, "```", ""]
    return "\n".join(lines)


def _format_settings(pipe) -> str:
    """The pipeline's stored sampling defaults (`sampling_defaults`), as `name=value` pairs."""
    defaults = getattr(pipe, "sampling_defaults", None) or dict(guidance_scale=4.0, top_k=900, top_p=0.95)
    return ", ".join(f"{k}={v}" for k, v in defaults.items())


def _format_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:,}"


def _metrics_section(report: Dict[str, Any]) -> List[str]:
    sampling = report.get("sampling") or {}
    extractor = report.get("feature_extractor") or {}
    reference = report.get("reference") or {}
    lines = ["## Evaluation", "", "| Metric | Value |", "| --- | --- |"]
    for key, value in publishable_metrics(report).items():
        lines.append(f"| {METRIC_TYPES[key][1]} | {value:.4f} |")
    lines += [
        "",
        f"Measured with `var-hf evaluate` on {sampling.get('num_samples', '?')} samples "
        f"({sampling.get('num_per_class', '?')} per class, PNG), guidance_scale={sampling.get('guidance_scale')}, "
        f"top_k={sampling.get('top_k')}, top_p={sampling.get('top_p')}, "
        f"temperature={sampling.get('temperature', 1.0)}, seed={sampling.get('seed')}; features: "
        f"{extractor.get('name', 'unknown')}; reference: `{os.path.basename(str(reference.get('source', '?')))}` "
        f"({reference.get('kind', '?')}).",
        "",
    ]
    return lines


# ----------------------------------------------------------------------------------------------------------------------
# Uploading
# ----------------------------------------------------------------------------------------------------------------------


def check_pipeline_folder(folder: str) -> Dict[str, Any]:
    """Check that `folder` is a saved pipeline (`model_index.json` and a folder per component); returns the index."""
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise FileNotFoundError(f"{folder!r} is not a saved pipeline: no model_index.json (use pipe.save_pretrained).")
    index = _read_json(index_path, "save the pipeline again")
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} is not a pipeline index (a JSON object); save the pipeline again.")
    components = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v[0] is not None]
    missing = [c for c in components if not os.path.isdir(os.path.join(folder, c))]
    if missing:
        raise FileNotFoundError(f"Pipeline folder {folder!r} lacks the component folders {missing}.")
    return index


def snapshot_files(folder: str, ignore_patterns: Sequence[str] = UPLOAD_IGNORE_PATTERNS) -> List[str]:
    """The files (relative, `/`-separated, sorted) that [`push_pipeline`] uploads from `folder`: everything but the
    ignore patterns and huggingface_hub's own defaults (`.git`, its cache), filtered by huggingface_hub's
    `filter_repo_objects` as `upload_folder` does."""
    root = Path(folder)
    relpaths = [p.relative_to(root).as_posix() for p in root.glob("**/*") if p.is_file()]
    patterns = [*ignore_patterns, *DEFAULT_IGNORE_PATTERNS]
    return sorted(filter_repo_objects(relpaths, ignore_patterns=patterns))


def _explain(step: str, repo_id: str, endpoint: str, err: Exception) -> str:
    where = f"{step} for {repo_id!r} on {endpoint}"
    if isinstance(err, OfflineModeIsEnabled):
        return f"Could not {where}: HF_HUB_OFFLINE is set; unset it to upload."
    if isinstance(err, LocalTokenNotFoundError):
        return f"Could not {where}: not logged in. Run `hf auth login` or pass a write token (--token / HF_TOKEN)."
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        server = (getattr(err, "server_message", None) or "").strip() or str(err).splitlines()[0]
        cause = {
            401: "not logged in or the token is invalid. Run `hf auth login` or pass a write token (--token / HF_TOKEN)",
            403: "the token may not write to this namespace (a read-only token, or someone else's user/organisation)",
            404: "the repository or namespace does not exist, or the token cannot see it",
            409: "a conflicting repository or commit exists",
            429: "rate limited; retry later",
        }.get(status, "the Hub refused the request")
        return f"Could not {where}: HTTP {status}: {cause}. Server said: {server}"
    if isinstance(err, HTTPError):  # transport level: refused, DNS, timeout, TLS
        return (
            f"Could not {where}: could not connect ({type(err).__name__}: {err}). Check the network connection "
            f"(and HF_ENDPOINT if set)."
        )
    if isinstance(err, ValueError) and "README.md" in str(err):
        return f"Could not {where}: the Hub rejected the model card (fix README.md or rewrite it with --write-card): {err}"
    return f"Could not {where}: {err}"


def push_pipeline(
    folder: str,
    repo_id: str,
    token: Optional[str] = None,
    private: bool = False,
    commit_message: str = "Upload VAR pipeline with var_hf",
    revision: Optional[str] = None,
    create_pr: bool = False,
    endpoint: Optional[str] = None,
    write_card_if_missing: bool = True,
    ignore_patterns: Sequence[str] = UPLOAD_IGNORE_PATTERNS,
    api: Optional[HfApi] = None,
):
    r"""
    Upload a saved pipeline folder to the Hub (`HfApi.create_repo` with `exist_ok=True`, then `upload_folder`).

    Args:
        folder (`str`):
            A `save_pretrained` folder (`model_index.json`, `vqvae/`, `transformer/`, `scheduler/`).
        repo_id (`str`):
            `"user/name"` or `"org/name"`.
        token (`str`, *optional*):
            A write token; defaults to the logged-in one (`hf auth login`) or `HF_TOKEN`.
        private (`bool`, *optional*, defaults to `False`):
            Create the repo private (an existing repo keeps its visibility).
        commit_message (`str`, *optional*):
            The commit message.
        revision (`str`, *optional*):
            Branch to push to.
        create_pr (`bool`, *optional*, defaults to `False`):
            Open a pull request instead of pushing to the branch.
        endpoint (`str`, *optional*):
            Hub URL; defaults to `HF_ENDPOINT` or huggingface.co.
        write_card_if_missing (`bool`, *optional*, defaults to `True`):
            Write a model card ([`write_model_card`]) when the folder has no `README.md`.
        ignore_patterns (`Sequence[str]`, *optional*):
            Files not uploaded (evaluation samples, `.npz`, scratch files); see [`snapshot_files`].
        api (`HfApi`, *optional*):
            A configured client (overrides `endpoint` and `token`).

    Returns:
        `huggingface_hub.CommitInfo` of the upload.

    Raises:
        `ValueError`: `repo_id` is not a valid Hub id (checked before anything is written).
        `FileNotFoundError`: the folder is not a saved pipeline.
        [`HubPushError`]: the Hub could not be reached or refused; the message names the repo, the step and the
            cause (no network, not logged in, no write access).
    """
    check_repo_id(repo_id)
    check_pipeline_folder(folder)
    if write_card_if_missing and not os.path.isfile(os.path.join(folder, "README.md")):
        write_model_card(folder, repo_id=repo_id)
    api = api or HfApi(endpoint=endpoint, token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private or None, exist_ok=True, repo_type="model")
    except (HTTPError, OfflineModeIsEnabled, LocalTokenNotFoundError) as err:
        raise HubPushError(_explain("create the repository", repo_id, api.endpoint, err)) from err
    try:
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
            ignore_patterns=list(ignore_patterns),  # a copy: upload_folder extends the list it gets
            repo_type="model",
        )
    except (HTTPError, OfflineModeIsEnabled, LocalTokenNotFoundError, ValueError) as err:
        # ValueError: the Hub's check of the README.md metadata failed (huggingface_hub validates it before uploading).
        raise HubPushError(_explain("upload the pipeline", repo_id, api.endpoint, err)) from err
    logger.info(f"Uploaded {folder} to {repo_url}")
    return info


__all__ = [
    "DEFAULT_TAGS",
    "HubPushError",
    "LIBRARY_NAME",
    "SAMPLE_GRID_FILENAME",
    "UPLOAD_IGNORE_PATTERNS",
    "check_card_inputs",
    "check_pipeline_folder",
    "check_repo_id",
    "eval_results_from_metrics",
    "make_sample_grid",
    "publishable_metrics",
    "push_pipeline",
    "read_metrics_report",
    "snapshot_files",
    "write_model_card",
]
