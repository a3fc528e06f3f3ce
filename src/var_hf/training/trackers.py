"""The Accelerator, metric trackers, console logging and the progress bar of both training stages.

Console: our own INFO lines (the run summary, validation results) are printed through `tqdm.write`, so they never
break the progress bar; accelerate's INFO lines, `datasets`' and transformers' progress bars are off unless `verbose`.
"""

import json
import logging
import os
import platform
import sys
import time
from typing import Any, Dict, Optional

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.tracking import GeneralTracker
from accelerate.utils import DistributedType, ProjectConfiguration

from var_hf.file_utils import cpu_computes_natively, cpu_emulates, library_versions, write_text_atomically
from var_hf.training.arguments import TrainingArguments

logger = get_logger(__name__)


class JSONLinesTracker(GeneralTracker):
    """An Accelerate tracker appending one JSON object per `log` call to `<logging_dir>/metrics.jsonl`."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, logging_dir: str, resume_step: Optional[int] = None):
        super().__init__()
        self.path = os.path.join(logging_dir, "metrics.jsonl")
        self.resume_step = resume_step
        self._file = None

    def start(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if self.resume_step is not None and os.path.exists(self.path):
            # Drop what a killed run logged after the checkpoint we resume from: those steps are trained again.
            with open(self.path) as f:
                lines = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= self.resume_step]
            write_text_atomically(self.path, "".join(lines))
        self._file = open(self.path, "a")

    @property
    def tracker(self):
        return self._file

    def store_init_configuration(self, values: dict):
        pass  # the full configuration is written to training_config.json

    def log(self, values: dict, step: Optional[int] = None, **kwargs):
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({k: (v.item() if torch.is_tensor(v) else v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def finish(self):
        if self._file is not None:
            self._file.close()


def _has_accelerator_device() -> bool:
    accelerator_api = getattr(torch, "accelerator", None)  # torch >= 2.6
    return accelerator_api.is_available() if accelerator_api is not None else torch.cuda.is_available()


def emulated_autocast_warning(device, mixed_precision: str) -> Optional[str]:
    """The start-up warning for autocast that this CPU emulates (None where there is nothing to say). Not an error:
    the run is correct, only slow; and not switched to float32 silently, which would round differently."""
    if not cpu_emulates(device, mixed_precision):
        return None
    return (
        f"--mixed_precision {mixed_precision} on a CPU without native {mixed_precision} "
        f"(capability {torch.backends.cpu.get_cpu_capability()}): its matmuls and convolutions are emulated, measured "
        "11-18x slower per training step than float32 on a 2-core AVX2 CPU (python benchmarks/cpu_autocast.py "
        "measures this machine). Pass --mixed_precision no (or accelerate launch --mixed_precision no) to train in "
        "float32; weights then round differently from a run under autocast."
    )


def warn_if_autocast_is_emulated(accelerator: Accelerator):
    message = emulated_autocast_warning(accelerator.device, accelerator.mixed_precision)
    if message is not None:
        logger.warning(message, main_process_only=True)


def build_accelerator(args: TrainingArguments, kwargs_handlers=None) -> Accelerator:
    trackers = []
    logging_dir = os.path.join(args.output_dir, "logs")
    for name in args.trackers:
        if name == "jsonl":
            trackers.append(JSONLinesTracker(logging_dir))
        elif name == "tensorboard":
            trackers.append("tensorboard")
    kwargs = {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator_device():
        # `accelerate launch --multi_gpu --num_processes N` on a host without GPUs (accelerate 1.15 has no launch flag
        # for several CPU processes: `--cpu --num_processes N` starts one): without cpu=True every process would
        # silently train alone as "rank 0"; with it they form one gloo process group.
        kwargs["cpu"] = True
    if args.compile:
        kwargs["dynamo_backend"] = "inductor"
    if args.mixed_precision is not None:
        kwargs["mixed_precision"] = args.mixed_precision
    accelerator = Accelerator(
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir),
        kwargs_handlers=kwargs_handlers,
        **kwargs,
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise ValueError("DeepSpeed is not supported by these scripts; use DDP or FSDP.")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not is_fsdp(accelerator):
        # accelerate 1.15 turns an FSDP config into FSDP only on GPU-like devices; on CPU the processes would train
        # unsharded (DDP over gloo, or each alone), which is not what the config asked for.
        raise ValueError(
            f"The accelerate config asks for FSDP, but accelerate runs FSDP only on GPUs (this run is "
            f"{accelerator.distributed_type} on {accelerator.device}). On CPU use `accelerate launch --multi_gpu "
            "--num_processes N` (DDP over gloo) instead."
        )
    return accelerator


def is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def flat_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Scalars only (what tracker hyper-parameter APIs accept)."""
    return {
        k: (v if isinstance(v, (bool, int, float, str)) or v is None else json.dumps(v)) for k, v in config.items()
    }


def init_trackers(accelerator: Accelerator, project_name: str, config: Dict[str, Any], start_step: int):
    """Start the trackers; on resume, drop the records a killed run wrote after `start_step` and make TensorBoard
    purge them too (those steps are trained again)."""
    for tracker in accelerator.log_with:
        if isinstance(tracker, JSONLinesTracker):
            tracker.resume_step = start_step if start_step > 0 else None
    accelerator.init_trackers(
        project_name, config=flat_config(config),
        init_kwargs={"tensorboard": {"purge_step": start_step + 1}} if start_step > 0 else None,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Console
# ----------------------------------------------------------------------------------------------------------------------


class TqdmLoggingHandler(logging.Handler):
    """Writes log records with `tqdm.write`, above an active progress bar instead of through it."""

    def emit(self, record: logging.LogRecord):
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(accelerator: Accelerator, verbose: bool = False):
    """var_hf's INFO lines on the main process, through tqdm; the libraries' INFO lines and load bars only when
    `verbose`."""
    import datasets
    import diffusers
    import transformers

    handler = TqdmLoggingHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, TqdmLoggingHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("var_hf").setLevel(logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose and accelerator.is_main_process:
        transformers.utils.logging.set_verbosity_info()
        transformers.utils.logging.enable_progress_bar()
        diffusers.utils.logging.enable_progress_bar()
    else:
        if accelerator.is_main_process:
            transformers.utils.logging.set_verbosity_warning()
        else:
            transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()


def environment_info(accelerator: Accelerator) -> Dict[str, Any]:
    return {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "device": str(accelerator.device),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_computes_natively("bf16"),
        **library_versions(),
        "command": " ".join(sys.argv),
    }


class Progress:
    """tqdm bar on the main process with the loss and samples/s (global)."""

    def __init__(self, accelerator: Accelerator, start: int, total: int, samples_per_step: int, disable: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, initial=start, disable=disable or not accelerator.is_local_main_process, dynamic_ncols=True,
            desc="train",
        )
        self.samples_per_step = samples_per_step
        self.last_time = time.perf_counter()

    def update(self, **postfix):
        now = time.perf_counter()
        rate = self.samples_per_step / max(now - self.last_time, 1e-9)
        self.last_time = now
        self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in postfix.items()}, "img/s": f"{rate:.1f}"}, refresh=False)
        self.bar.update(1)
        return rate

    def close(self):
        self.bar.close()


def reduce_mean(accelerator: Accelerator, values: Dict[str, float]) -> Dict[str, float]:
    """Average scalar metrics over processes (every process must call this at the same step)."""
    if not values:
        return {}
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], device=accelerator.device, dtype=torch.float64)
    if accelerator.num_processes > 1:
        tensor = accelerator.reduce(tensor, reduction="mean")
    return dict(zip(keys, tensor.tolist()))


def reduce_sum(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    if accelerator.num_processes > 1:
        return accelerator.reduce(tensor, reduction="sum")
    return tensor


def should(step: int, every: int, max_steps: int) -> bool:
    """True on every `every`-th completed step and on the last one."""
    return step == max_steps or (every > 0 and step % every == 0)


__all__ = [
    "JSONLinesTracker",
    "Progress",
    "TqdmLoggingHandler",
    "build_accelerator",
    "emulated_autocast_warning",
    "environment_info",
    "init_trackers",
    "is_fsdp",
    "reduce_mean",
    "reduce_sum",
    "setup_logging",
    "should",
    "warn_if_autocast_is_emulated",
]
