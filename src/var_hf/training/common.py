"""What both training stages share: arguments, the Accelerator, the learning-rate schedule, parameter groups, EMA,
atomic rotating checkpoints with exact resumption, metric logging and the final export.

Batch sizes. `--batch_size` is the *global* batch of one optimizer step, as the reference's `--bs`. Each process
takes `batch_size / (num_processes * grad_accum)` samples per micro-batch, so the same command gives the same
optimisation on one or several processes (see [`var_hf.data.TrainBatchSampler`] for how the samples are split).

Resumption. Everything a step depends on is either in the checkpoint (weights, optimizer, EMA, GradScaler, the RNG
states of every process, the step) or a pure function of the seed and the step (data order, crops, flips), so a
resumed run ends with the same weights as an uninterrupted one.
"""

import argparse
import contextlib
import copy
import hashlib
import glob
import json
import math
import os
import platform
import re
import shutil
import signal
import sys
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.tracking import GeneralTracker
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-" + CHECKPOINT_PREFIX
TRAINER_STATE_NAME = "trainer_state.json"
RUN_CONFIG_NAME = "training_config.json"
CHECKPOINT_FORMAT_VERSION = 1
# Testing hook: a process SIGKILLs itself right after the checkpoint of this step is complete (tests/test_training.py).
KILL_ENV = "VAR_HF_TEST_KILL_AFTER_STEP"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or was written by an incompatible run."""


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------


def int_list(value: str) -> List[int]:
    """`"1,2,3"`, `"1_2_3"` or `"1 2 3"` -> [1, 2, 3] (the reference spells patch schedules `1_2_3_4_5_6_8_10_13_16`)."""
    return [int(v) for v in re.split(r"[,_\s]+", value.strip()) if v]


def add_data_arguments(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", default="fashion-mnist",
        help="'fashion-mnist' (Debian's idx files), a folder in ImageNet's train/val layout, a save_to_disk folder "
        "or a Hub dataset id.",
    )
    group.add_argument("--image_column", default="image", help="Name of the image column.")
    group.add_argument("--label_column", default="label", help="Name of the class-label column.")
    group.add_argument("--train_split", default="train", help="Split used for training.")
    group.add_argument(
        "--val_split", default="validation",
        help="Split used for validation ('validation', 'val' and 'test' stand in for one another).",
    )
    group.add_argument(
        "--image_size", type=int, default=None,
        help="Training resolution; defaults to the VQVAE's (finest patch side x downsample factor).",
    )
    group.add_argument(
        "--mid_ratio", type=float, default=1.125,
        help="Resize the shorter side to round(mid_ratio * image_size) (Lanczos) before cropping, as the reference.",
    )
    group.add_argument("--hflip", action="store_true", help="Random horizontal flips during training.")
    group.add_argument("--max_train_samples", type=int, default=None, help="Use only the first N training samples.")
    group.add_argument("--max_val_samples", type=int, default=None, help="Use only the first N validation samples.")
    group.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes per training process.")


def add_training_arguments(parser: argparse.ArgumentParser):
    """Options shared by both stages; each stage sets its own defaults with `parser.set_defaults`."""
    group = parser.add_argument_group("run")
    group.add_argument("--output_dir", required=True, help="Folder for checkpoints, logs and the exported model.")
    group.add_argument("--seed", type=int, default=0, help="Seed of the model init, data order and augmentation.")
    group.add_argument(
        "--resume", default=None,
        help="'latest' (the newest checkpoint in --output_dir; a fresh start if there is none) or a checkpoint folder.",
    )
    group.add_argument("--max_steps", type=int, default=None, help="Optimizer steps to train (overrides --epochs).")
    group.add_argument("--epochs", type=float, default=1.0, help="Epochs to train when --max_steps is not given.")
    group.add_argument("--save_every", type=int, default=1000, help="Write a checkpoint every N steps (and at the end).")
    group.add_argument("--keep_last", type=int, default=3, help="How many checkpoints to keep (older ones are deleted).")
    group.add_argument("--log_every", type=int, default=10, help="Log metrics every N steps.")
    group.add_argument(
        "--log_with", default="jsonl",
        help="Comma-separated trackers: 'jsonl' (logs/metrics.jsonl), 'tensorboard', or 'none'.",
    )
    group.add_argument(
        "--validate_every", type=int, default=0, help="Validate every N steps (0: only at the end; -1: never)."
    )
    group.add_argument("--no_progress_bar", action="store_true", help="Disable the tqdm progress bar.")

    group = parser.add_argument_group("optimisation")
    group.add_argument(
        "--batch_size", type=int, default=256,
        help="Global batch per optimizer step (all processes and accumulation steps together).",
    )
    group.add_argument("--grad_accum", type=int, default=1, help="Gradient accumulation steps.")
    group.add_argument(
        "--lr", type=float, default=None, help="Peak learning rate; defaults to base_lr * batch_size / 256."
    )
    group.add_argument("--base_lr", type=float, default=1e-4, help="Learning rate per 256 samples (reference's tblr).")
    group.add_argument(
        "--lr_schedule", default="lin0",
        help="Decay after warm-up: lin0 (reference default), lin, linT (e.g. lin0.8), lin00, cos, exp or const.",
    )
    group.add_argument(
        "--warmup_ratio", type=float, default=0.02, help="Warm-up length as a fraction of the run (reference: ep/50)."
    )
    group.add_argument("--warmup_steps", type=int, default=None, help="Warm-up length in steps (overrides the ratio).")
    group.add_argument("--warmup_start", type=float, default=0.005, help="Initial lr ratio of the warm-up (wp0).")
    group.add_argument("--final_lr_ratio", type=float, default=0.01, help="Final lr ratio at the end of training (wpe).")
    group.add_argument("--weight_decay", type=float, default=0.05, help="AdamW weight decay (matrices only).")
    group.add_argument(
        "--weight_decay_end", type=float, default=None,
        help="Weight decay at the end (cosine from --weight_decay); defaults to constant.",
    )
    group.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    group.add_argument("--adam_beta2", type=float, default=0.95, help="AdamW beta2.")
    group.add_argument("--grad_clip", type=float, default=2.0, help="Clip the global gradient norm (<= 0: off).")

    group = parser.add_argument_group("performance")
    group.add_argument(
        "--mixed_precision", default=None, choices=["no", "fp16", "bf16"],
        help="Autocast precision (defaults to the accelerate config, else 'no').",
    )
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute activations in the backward pass."
    )
    group.add_argument("--compile", action="store_true", help="torch.compile the trained model (inductor).")
    group.add_argument(
        "--ema_decay", type=float, default=0.0, help="Keep an exponential moving average of the weights (0: off)."
    )
    group.add_argument(
        "--export_weights", default="best", choices=["best", "ema", "raw"],
        help="Weights of the exported model: 'ema', 'raw', or 'best' (EMA or raw, whichever validates better; raw "
        "without EMA).",
    )


def args_to_config(args: argparse.Namespace) -> Dict[str, Any]:
    return {k: v for k, v in sorted(vars(args).items()) if not callable(v)}


def flat_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Scalars only (what tracker hyper-parameter APIs accept)."""
    return {
        k: (v if isinstance(v, (bool, int, float, str)) or v is None else json.dumps(v)) for k, v in config.items()
    }


# ----------------------------------------------------------------------------------------------------------------------
# Accelerator, trackers, batch sizes
# ----------------------------------------------------------------------------------------------------------------------


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
            with open(self.path, "w") as f:
                f.writelines(lines)
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


def build_accelerator(args: argparse.Namespace, kwargs_handlers=None) -> Accelerator:
    trackers = []
    logging_dir = os.path.join(args.output_dir, "logs")
    for name in [t.strip().lower() for t in args.log_with.split(",") if t.strip()]:
        if name == "jsonl":
            trackers.append(JSONLinesTracker(logging_dir))
        elif name == "tensorboard":
            trackers.append("tensorboard")
        elif name != "none":
            raise ValueError(f"Unknown tracker {name!r}; use jsonl, tensorboard or none.")
    kwargs = {}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator_device():
        # `accelerate launch --multi_gpu --num_processes N` on a host without GPUs: without cpu=True every process
        # would silently train alone as "rank 0"; with it they form one gloo process group.
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
    return accelerator


def _has_accelerator_device() -> bool:
    accelerator_api = getattr(torch, "accelerator", None)
    if accelerator_api is not None:
        return accelerator_api.is_available()
    return torch.cuda.is_available()


def init_trackers(accelerator: Accelerator, project_name: str, args: argparse.Namespace, start_step: int):
    """Start the trackers; on resume, drop the records a killed run wrote after `start_step` and make TensorBoard
    purge them too (those steps are trained again)."""
    for tracker in accelerator.log_with:
        if isinstance(tracker, JSONLinesTracker):
            tracker.resume_step = start_step if start_step > 0 else None
    accelerator.init_trackers(
        project_name, config=flat_config(args_to_config(args)),
        init_kwargs={"tensorboard": {"purge_step": start_step + 1}} if start_step > 0 else None,
    )


def is_fsdp(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def per_process_batch_size(batch_size: int, num_processes: int, grad_accum: int) -> int:
    """Samples per process and micro-batch; the global batch must split evenly."""
    if grad_accum < 1:
        raise ValueError(f"--grad_accum must be >= 1, got {grad_accum}.")
    if batch_size % (num_processes * grad_accum):
        raise ValueError(
            f"--batch_size {batch_size} (global, per optimizer step) must be divisible by num_processes x "
            f"grad_accum = {num_processes} x {grad_accum}."
        )
    return batch_size // (num_processes * grad_accum)


def peak_learning_rate(args: argparse.Namespace) -> float:
    """The reference's rule `lr = base_lr * global_batch / 256` unless `--lr` is given."""
    return args.lr if args.lr is not None else args.base_lr * args.batch_size / 256


def total_steps(args: argparse.Namespace, num_train_samples: int) -> int:
    if args.max_steps is not None:
        return args.max_steps
    return max(1, int(args.epochs * num_train_samples // args.batch_size))


def setup_logging(accelerator: Accelerator):
    import logging

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO,
        stream=sys.stdout,
    )
    import datasets
    import transformers

    if not accelerator.is_main_process:
        transformers.utils.logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_warning()
    datasets.disable_progress_bars()


def seed_everything(seed: int, process_index: int = 0):
    """Same seed on every process for the model init; call again with the process index before training so that
    stochastic regularisers (class dropout, drop path) differ across processes."""
    set_seed(seed + process_index)


# ----------------------------------------------------------------------------------------------------------------------
# Learning-rate schedule and parameter groups
# ----------------------------------------------------------------------------------------------------------------------


def lr_ratio(
    step: int, warmup_steps: int, max_steps: int, schedule: str = "lin0", warmup_start: float = 0.005,
    final_ratio: float = 0.01,
) -> float:
    """Learning rate at `step` relative to the peak: the reference's `lr_wd_annealing` (utils/lr_control.py).

    Linear warm-up from `warmup_start`, then: `lin0` flat for 5% of the rest and linear to `final_ratio`; `lin` the
    same with 15%; `linT` (T a float) linear to a midpoint over T then to `final_ratio`; `lin00` linear from the
    start; `cos` half cosine; `exp` exponential after 15%; `const` flat.
    """
    if step < warmup_steps:
        return warmup_start + (1 - warmup_start) * step / warmup_steps
    span = max_steps - 1 - warmup_steps
    passed = min(max((step - warmup_steps) / span, 0.0), 1.0) if span > 0 else 1.0
    rest = 1 - passed
    if schedule == "const":
        return 1.0
    if schedule == "cos":
        return final_ratio + (1 - final_ratio) * (0.5 + 0.5 * math.cos(math.pi * passed))
    if schedule in ("lin", "lin0"):
        flat = 0.15 if schedule == "lin" else 0.05
        return 1.0 if passed < flat else final_ratio + (1 - final_ratio) * rest / (1 - flat)
    if schedule == "lin00":
        return final_ratio + (1 - final_ratio) * rest
    if schedule == "exp":
        flat = 0.15
        return 1.0 if passed < flat else math.exp((passed - flat) / (1 - flat) * math.log(final_ratio))
    if schedule.startswith("lin"):
        try:
            T = float(schedule[3:])
        except ValueError:
            raise ValueError(f"Unknown lr schedule {schedule!r}.") from None
        mid = (1 + final_ratio + (1 - final_ratio) * (1 - T)) / 2
        return 1 + (mid - 1) * passed / T if passed < T else final_ratio + (mid - final_ratio) * rest / (1 - T)
    raise ValueError(f"Unknown lr schedule {schedule!r}; use lin0, lin, linT, lin00, cos, exp or const.")


def weight_decay_at(step: int, max_steps: int, start: float, end: Optional[float]) -> float:
    """Cosine from `start` to `end` over the run (the reference's twd -> twde); constant when `end` is None."""
    if end is None:
        return start
    passed = step / max(max_steps - 1, 1)
    return end + (start - end) * (0.5 + 0.5 * math.cos(math.pi * passed))


def apply_schedule(optimizer: torch.optim.Optimizer, args: argparse.Namespace, step: int, max_steps: int) -> float:
    warmup = args.warmup_steps if args.warmup_steps is not None else round(args.warmup_ratio * max_steps)
    ratio = lr_ratio(step, warmup, max_steps, args.lr_schedule, args.warmup_start, args.final_lr_ratio)
    lr = peak_learning_rate(args) * ratio
    wd = weight_decay_at(step, max_steps, args.weight_decay, args.weight_decay_end)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        group["weight_decay"] = wd * group.get("wd_scale", 1.0)
    return lr


def param_groups(model: torch.nn.Module, no_decay_keys: Iterable[str]) -> List[Dict[str, Any]]:
    """Two AdamW groups as the reference's `filter_params`: no weight decay for vectors, biases and the named
    embedding-like parameters."""
    no_decay_keys = tuple(no_decay_keys)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith("bias") or any(k in name for k in no_decay_keys):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = []
    if decay:
        groups.append({"params": decay, "wd_scale": 1.0, "lr_scale": 1.0})
    if no_decay:
        groups.append({"params": no_decay, "wd_scale": 0.0, "lr_scale": 1.0})
    return groups


def build_adamw(groups, args: argparse.Namespace, betas: Optional[Sequence[float]] = None) -> torch.optim.AdamW:
    betas = tuple(betas) if betas is not None else (args.adam_beta1, args.adam_beta2)
    # Weight decay and lr are set every step by `apply_schedule`.
    return torch.optim.AdamW(groups, lr=peak_learning_rate(args), betas=betas, weight_decay=0.0)


# ----------------------------------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's trainable parameters, kept in float32.

    The effective decay ramps up as `min(decay, (1 + n) / (10 + n))` over the first updates, so early weights are
    not frozen into the average. It is registered with `accelerator.register_for_checkpointing`, so it is saved and
    restored with the run.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {
            name: p.detach().float().clone() for name, p in model.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        decay = self.current_decay()
        self.num_updates += 1
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1 - decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module):
        params = dict(model.named_parameters())
        missing = set(self.shadow) - set(params)
        if missing:
            raise KeyError(f"EMA holds parameters the model lacks: {sorted(missing)[:5]}")
        for name, value in self.shadow.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))

    def state_dict(self) -> Dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: Dict[str, Any]):
        if set(state["shadow"]) != set(self.shadow):
            raise CheckpointError("The checkpoint's EMA does not hold the same parameters as this model.")
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)


@contextlib.contextmanager
def ema_weights(model: torch.nn.Module, ema: Optional[EMA]):
    """Temporarily swap the EMA weights into `model` (every process does the same, so DDP replicas stay equal)."""
    if ema is None:
        yield
        return
    backup = {name: p.detach().clone() for name, p in model.named_parameters() if name in ema.shadow}
    ema.copy_to(model)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in backup:
                    p.copy_(backup[name])


def use_ema_for_export(args: argparse.Namespace, ema: Optional[EMA], final_val: Dict[str, float], key: str,
                       higher_is_better: bool) -> bool:
    """`--export_weights`: 'ema', 'raw', or 'best' (EMA unless the raw weights validate better on `key`)."""
    if ema is None or args.export_weights == "raw":
        return False
    if args.export_weights == "ema":
        return True
    raw, averaged = final_val.get(f"val/{key}"), final_val.get(f"val_ema/{key}")
    if raw is None or averaged is None:
        return True
    return averaged >= raw if higher_is_better else averaged <= raw


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------


def _checkpoint_step(path: str) -> int:
    return int(os.path.basename(path.rstrip("/"))[len(CHECKPOINT_PREFIX):])


class CheckpointManager:
    r"""
    Atomic, rotating `accelerator.save_state` checkpoints in `output_dir/checkpoint-<step>`.

    Every process writes its part into `output_dir/.tmp-checkpoint-<step>`; the main process then adds
    `trainer_state.json` (step, run kind, compatibility fingerprint, number of processes) and renames the folder, so a
    folder named `checkpoint-*` is always complete. A crash during saving leaves only a `.tmp-*` folder, which is
    ignored and removed on the next start.

    Args:
        accelerator (`Accelerator`), output_dir (`str`):
        kind (`str`): `"vqvae"` or `"var"`; a checkpoint of the other kind is refused.
        compatibility (`dict`): What must match to resume (model config, global batch, seed, ...).
        keep_last (`int`): Checkpoints kept.
        run_config (`dict`): The run's full configuration, copied into each checkpoint.
    """

    def __init__(self, accelerator: Accelerator, output_dir: str, kind: str, compatibility: Dict[str, Any],
                 keep_last: int = 3, run_config: Optional[Dict[str, Any]] = None):
        self.accelerator, self.output_dir, self.kind = accelerator, output_dir, kind
        self.compatibility = json.loads(json.dumps(compatibility))  # normalise tuples to lists
        self.keep_last = max(1, keep_last)
        self.run_config = run_config or {}

    def checkpoints(self) -> List[str]:
        paths = [
            p for p in glob.glob(os.path.join(self.output_dir, CHECKPOINT_PREFIX + "*"))
            if os.path.isdir(p) and re.fullmatch(r"\d+", os.path.basename(p)[len(CHECKPOINT_PREFIX):])
        ]
        return sorted(paths, key=_checkpoint_step)

    def resolve(self, resume: Optional[str]) -> Optional[str]:
        """Checkpoint folder to resume from, or None for a fresh start."""
        if resume is None:
            if self.checkpoints():
                logger.warning(
                    f"{self.output_dir} already holds checkpoints; starting from scratch anyway (pass --resume latest "
                    "to continue). Old checkpoints will be rotated out.", main_process_only=True,
                )
            return None
        if resume == "latest":
            found = self.checkpoints()
            if not found:
                logger.info(f"No checkpoint in {self.output_dir}; starting from scratch.", main_process_only=True)
                return None
            return found[-1]
        if not os.path.isdir(resume):
            raise CheckpointError(f"--resume {resume}: no such checkpoint folder.")
        return resume

    def read_state(self, path: str) -> Dict[str, Any]:
        state_path = os.path.join(path, TRAINER_STATE_NAME)
        if not os.path.exists(state_path):
            raise CheckpointError(
                f"{path} is not a complete checkpoint (no {TRAINER_STATE_NAME}); it is corrupt or was not written by "
                "var_hf. Delete it or pass another --resume."
            )
        try:
            with open(state_path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{state_path} is unreadable ({e}); the checkpoint is corrupt.") from e

    def check_compatible(self, path: str, state: Dict[str, Any]):
        problems = []
        if state.get("kind") != self.kind:
            problems.append(f"it is a {state.get('kind')!r} checkpoint, this is a {self.kind!r} run")
        if state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
            problems.append(f"format version {state.get('format_version')} != {CHECKPOINT_FORMAT_VERSION}")
        if state.get("num_processes") != self.accelerator.num_processes:
            problems.append(
                f"it was written by {state.get('num_processes')} processes, this run has "
                f"{self.accelerator.num_processes} (the per-process RNG states cannot be matched)"
            )
        saved = state.get("compatibility", {})
        for key in sorted(set(saved) | set(self.compatibility)):
            if saved.get(key) != self.compatibility.get(key):
                problems.append(f"{key}: checkpoint {saved.get(key)!r} != this run {self.compatibility.get(key)!r}")
        if problems:
            raise CheckpointError(f"Cannot resume from {path}: " + "; ".join(problems) + ".")
        num_rng = len(glob.glob(os.path.join(path, "random_states_*.pkl")))
        if num_rng != self.accelerator.num_processes:
            raise CheckpointError(
                f"{path} holds {num_rng} random-state files for {self.accelerator.num_processes} processes; the "
                "checkpoint is incomplete or corrupt."
            )

    def load(self, path: str) -> int:
        """Restore everything `accelerator.prepare`d or registered; return the step to continue from."""
        state = self.read_state(path)
        self.check_compatible(path, state)
        try:
            self.accelerator.load_state(path)
        except Exception as e:  # a truncated or foreign file surfaces here as many different exception types
            raise CheckpointError(f"Could not load checkpoint {path}: {type(e).__name__}: {e}") from e
        logger.info(f"Resumed from {path} at step {state['step']}.", main_process_only=True)
        return int(state["step"])

    def cleanup_partial(self):
        if self.accelerator.is_main_process:
            for path in glob.glob(os.path.join(self.output_dir, TMP_PREFIX + "*")):
                logger.warning(f"Removing partial checkpoint {path} (a save was interrupted).")
                shutil.rmtree(path, ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def save(self, step: int, extra: Optional[Dict[str, Any]] = None) -> str:
        acc = self.accelerator
        final = os.path.join(self.output_dir, f"{CHECKPOINT_PREFIX}{step:08d}")
        tmp = os.path.join(self.output_dir, f"{TMP_PREFIX}{step:08d}")
        if acc.is_main_process and os.path.exists(tmp):
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(tmp)
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "format_version": CHECKPOINT_FORMAT_VERSION,
                "kind": self.kind,
                "step": step,
                "num_processes": acc.num_processes,
                "compatibility": self.compatibility,
                "run_config": self.run_config,
                **(extra or {}),
            }
            with open(os.path.join(tmp, TRAINER_STATE_NAME), "w") as f:
                json.dump(state, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            if os.path.exists(final):  # re-running the same step (e.g. a restart without --resume)
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.checkpoints()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        kill_at = os.environ.get(KILL_ENV)
        if kill_at is not None and int(kill_at) == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return final


def write_run_config(output_dir: str, config: Dict[str, Any]):
    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, RUN_CONFIG_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(config, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(output_dir, RUN_CONFIG_NAME))


def start_or_resume(
    accelerator: Accelerator, args: argparse.Namespace, kind: str, compatibility: Dict[str, Any],
    run_config: Dict[str, Any],
):
    """Shared start of both stages: checkpoint manager, resume (or seed), run config and trackers.

    Returns `(checkpoint_manager, start_step, resume_path)`; `resume_path` is None for a fresh run.
    """
    ckpt = CheckpointManager(accelerator, args.output_dir, kind, compatibility, args.keep_last, run_config)
    ckpt.cleanup_partial()
    resume_path = ckpt.resolve(args.resume)
    start_step = ckpt.load(resume_path) if resume_path else 0
    if accelerator.is_main_process:
        write_run_config(args.output_dir, run_config)
    init_trackers(accelerator, f"train_{kind}", args, start_step)
    if resume_path is None:
        # Per-process streams for anything stochastic inside the step (class dropout, drop path, GAN, dead codes);
        # on resume they are restored from the checkpoint instead.
        seed_everything(args.seed, accelerator.process_index)
    return ckpt, start_step, resume_path


def environment_info(accelerator: Accelerator) -> Dict[str, Any]:
    import accelerate
    import datasets
    import diffusers
    import transformers

    return {
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "device": str(accelerator.device),
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "command": " ".join(sys.argv),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Progress and metrics
# ----------------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------------------


def exported_copy(accelerator: Accelerator, model, ema: Optional[EMA] = None):
    """A plain CPU copy of the trained model (full weights gathered under FSDP), optionally with the EMA weights."""
    unwrapped = accelerator.unwrap_model(model)
    if is_fsdp(accelerator):
        state = accelerator.get_state_dict(model)
        copy_model = type(unwrapped)(copy.deepcopy(unwrapped.config))
        if accelerator.is_main_process:
            copy_model.load_state_dict(state)
    else:
        copy_model = copy.deepcopy(unwrapped)
    copy_model = copy_model.to("cpu").float()
    if ema is not None:
        ema.copy_to(copy_model)
    return copy_model.eval()


def vqvae_folder(path: str) -> str:
    """A MultiScaleVQVAE folder: `path` itself, or the `vqvae/` inside a pipeline or a train_vqvae output folder."""
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    if os.path.exists(os.path.join(path, "vqvae", "config.json")):
        return os.path.join(path, "vqvae")
    raise FileNotFoundError(f"No MultiScaleVQVAE in {path} (expected config.json or vqvae/config.json).")


def load_frozen_vqvae(path: str, device) -> "torch.nn.Module":
    from ..modeling_vqvae import MultiScaleVQVAE

    vqvae = MultiScaleVQVAE.from_pretrained(vqvae_folder(path)).to(device).eval()
    vqvae.requires_grad_(False)
    return vqvae


def vqvae_fingerprint(vqvae) -> str:
    """Short hash of a VQVAE's configuration and codebook: tokens are only meaningful with the VQVAE that made them."""
    digest = hashlib.sha256()
    config = {k: v for k, v in vqvae.config.to_dict().items() if k not in ("transformers_version", "_name_or_path")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(vqvae.quantizer.codebook.weight.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def write_model_card(folder: str, title: str, description: str, datasets: Optional[Sequence[str]] = None,
                     sample_grid: bool = True):
    """The model card of an exported pipeline: `var_hf.hub.write_model_card` (which also draws a sample grid) when it
    is importable, else a minimal README.md written here."""
    try:
        from var_hf.hub import write_model_card as hub_write_model_card
    except ImportError:
        hub_write_model_card = None
    if hub_write_model_card is not None:
        hub_write_model_card(
            folder, model_name=title, description=description, datasets=list(datasets or []) or None,
            sample_grid=sample_grid,
        )
        return
    lines = [
        "---", "library_name: var_hf", "tags:", "- var", "- next-scale-prediction", "- class-conditional", "---", "",
        f"# {title}", "", description, "", "## Usage", "", "```python", "import torch",
        "from var_hf.pipelines import VARPipeline", "", f'pipe = VARPipeline.from_pretrained("{folder}")',
        'images = pipe(class_labels=[0], generator=torch.Generator().manual_seed(0), output_type="np").images',
        "```", "",
    ]
    with open(os.path.join(folder, "README.md"), "w") as f:
        f.write("\n".join(lines))


def save_pipeline(folder: str, vqvae, transformer, card: Optional[Dict[str, Any]] = None) -> bool:
    """Write a complete `VARPipeline` folder (model_index.json, vqvae/, transformer/, scheduler/) plus a model card.

    Returns False (after saving the two models side by side) when `var_hf.pipelines.VARPipeline` is unavailable.
    """
    try:
        from var_hf.pipelines import VARPipeline, VARScaleScheduler
    except ImportError as e:
        logger.warning(
            f"var_hf.pipelines is not importable ({e}); saving vqvae/ and transformer/ without model_index.json."
        )
        vqvae.save_pretrained(os.path.join(folder, "vqvae"))
        transformer.save_pretrained(os.path.join(folder, "transformer"))
        return False
    pipe = VARPipeline(
        vqvae=vqvae, transformer=transformer,
        scheduler=VARScaleScheduler(patch_nums=list(transformer.config.patch_nums)),
    )
    pipe.save_pretrained(folder)
    if card is not None:
        write_model_card(folder, **card)
    return True


__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "EMA",
    "start_or_resume",
    "JSONLinesTracker",
    "KILL_ENV",
    "Progress",
    "add_data_arguments",
    "add_training_arguments",
    "apply_schedule",
    "build_accelerator",
    "build_adamw",
    "ema_weights",
    "exported_copy",
    "init_trackers",
    "int_list",
    "load_frozen_vqvae",
    "lr_ratio",
    "param_groups",
    "peak_learning_rate",
    "per_process_batch_size",
    "reduce_mean",
    "save_pipeline",
    "seed_everything",
    "total_steps",
    "use_ema_for_export",
    "vqvae_fingerprint",
    "vqvae_folder",
    "write_model_card",
    "write_run_config",
]
