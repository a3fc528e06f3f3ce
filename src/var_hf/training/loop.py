"""The training loop both stages share: a `TrainingStage` says what to load, build and do in one optimizer step;
`train(stage)` does the rest (Accelerator, seeding, checkpoints and exact resumption, trackers, validation, export).

Resumption. Everything a step depends on is either in the checkpoint (weights, optimizers, EMA, GradScaler, the RNG
states of every process, the step, the stage's own counters) or a pure function of the seed and the step (data order,
crops, flips), so a resumed run ends with the same weights as an uninterrupted one.
"""

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed

from var_hf.data import build_eval_loader, build_train_loader
from var_hf.training.arguments import DataArguments, TrainingArguments
from var_hf.training.checkpointing import CheckpointError, CheckpointManager, write_run_config
from var_hf.training.export import exported_copy
from var_hf.training.optimization import (
    EMA, apply_schedule, ema_weights, per_process_batch_size, total_steps, use_ema_for_export, warmup_steps_for,
)
from var_hf.training.trackers import (
    Progress, build_accelerator, environment_info, init_trackers, reduce_mean, setup_logging, should,
    warn_if_autocast_is_emulated,
)

logger = get_logger(__name__)

EMA_FILE = "ema.safetensors"


@dataclass
class StepOutput:
    """What one optimizer step reports: the loss for the progress bar, metrics averaged over processes, and metrics
    logged as they are (only filled on logging steps)."""

    loss: float
    metrics: Dict[str, float] = field(default_factory=dict)
    extras: Dict[str, Any] = field(default_factory=dict)


class TrainingStage:
    """One training stage. Subclasses set `kind`, `export_key`/`higher_is_better` (the validation metric that picks EMA
    or raw weights) and implement the hooks below; `train` calls them in this order:

    `kwargs_handlers` (before the Accelerator), `check_accelerator`, `load_data`, `build_models` (after seeding; sets
    `model`, `unwrapped` and `optimizer`, all prepared), then per step `train_step`, and `validate` / `export`.
    """

    kind: str = ""
    export_key: str = ""
    higher_is_better: bool = False

    def __init__(self, data_args: DataArguments, training_args: TrainingArguments):
        self.data_args, self.args = data_args, training_args
        self.accelerator: Optional[Accelerator] = None
        self.train_data = self.val_data = self.train_transform = self.val_transform = None
        self.model = self.unwrapped = self.optimizer = None
        self.ema: Optional[EMA] = None
        self.max_steps = self.warmup_steps = 0

    # Hooks -------------------------------------------------------------------------------------------------------------

    def kwargs_handlers(self) -> List[Any]:
        return []

    def check_accelerator(self):
        """Refuse what this stage cannot do under the Accelerator's distributed type."""

    def load_data(self):
        """Set `train_data`, `val_data` (None without validation), `train_transform`, `val_transform` (None for token
        datasets)."""
        raise NotImplementedError

    def build_models(self):
        raise NotImplementedError

    def model_arguments(self) -> Dict[str, Any]:
        return {}

    def compatibility(self) -> Dict[str, Any]:
        """What must be equal between a checkpoint and this run (besides the global batch, seed and data size)."""
        return {}

    def run_config(self) -> Dict[str, Any]:
        return {}

    def describe(self) -> str:
        return ""

    def train_step(self, step: int, lr: float, batches, log_now: bool) -> StepOutput:
        raise NotImplementedError

    def validate(self, loader) -> Dict[str, float]:
        raise NotImplementedError

    def checkpoint_tensors(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """Our own state beyond the EMA, as safetensors files (file name -> tensors)."""
        return {}

    def load_checkpoint_tensors(self, tensors: Dict[str, Dict[str, torch.Tensor]]):
        pass

    def export(self, exported, summary: Dict[str, Any], final_val: Dict[str, float]) -> Dict[str, Any]:
        """Save the exported model (main process only); return anything to add to the final run config."""
        raise NotImplementedError


def _restore_ema(ema: Optional[EMA], path: str, state: Dict[str, Any], tensors: Dict[str, Dict[str, torch.Tensor]]):
    if ema is None:
        return
    if EMA_FILE not in tensors or "ema" not in state:
        raise CheckpointError(f"Cannot resume from {path}: it holds no EMA weights ({EMA_FILE}) and this run has "
                              "--ema-decay > 0.")
    try:
        ema.load_state_dict({**state["ema"], "shadow": tensors[EMA_FILE]})
    except ValueError as e:
        raise CheckpointError(f"Cannot resume from {path}: {e}") from e


def train(stage: TrainingStage) -> int:
    """Run `stage` from scratch or from `--resume`, then export. Returns 0."""
    args = stage.args
    accelerator = build_accelerator(args, stage.kwargs_handlers())
    stage.accelerator = accelerator
    setup_logging(accelerator, args.verbose)
    warn_if_autocast_is_emulated(accelerator)
    stage.check_accelerator()
    grad_accum = args.gradient_accumulation_steps
    micro_batch = per_process_batch_size(args.batch_size, accelerator.num_processes, grad_accum)
    stage.load_data()
    stage.max_steps = max_steps = total_steps(args, len(stage.train_data))
    stage.warmup_steps = warmup_steps_for(args, max_steps)

    # Models: the same init on every process
    set_seed(args.seed)
    stage.build_models()
    stage.ema = ema = EMA(stage.unwrapped, args.ema_decay) if args.ema_decay > 0 else None

    # Checkpoints and resumption
    arguments = {**asdict(stage.data_args), **args.to_dict(), **stage.model_arguments()}
    run_config = {
        "stage": stage.kind, "args": arguments, **stage.run_config(), "max_steps": max_steps,
        "warmup_steps": stage.warmup_steps, "micro_batch_per_process": micro_batch, "peak_lr": args.peak_lr,
        "num_train_samples": len(stage.train_data), "environment": environment_info(accelerator),
    }
    compat = {**stage.compatibility(), "batch_size": args.batch_size, "gradient_accumulation_steps": grad_accum,
              "seed": args.seed, "num_train_samples": len(stage.train_data)}
    ckpt = CheckpointManager(accelerator, args.output_dir, stage.kind, compat, args.keep_last, run_config)
    ckpt.cleanup_partial()
    resume_path = ckpt.resolve(args.resume, args.overwrite_output_dir)
    start_step = 0
    if resume_path is not None:
        start_step, state, tensors = ckpt.load(resume_path)
        _restore_ema(ema, resume_path, state, tensors)
        stage.load_checkpoint_tensors(tensors)
    if accelerator.is_main_process:
        write_run_config(args.output_dir, run_config)
    init_trackers(accelerator, f"train_{stage.kind}", arguments, start_step)
    if resume_path is None:
        # Per-process streams for anything stochastic inside the step (class dropout, drop path, GAN, dead codes);
        # on resume they are restored from the checkpoint instead.
        set_seed(args.seed + accelerator.process_index)

    loader = build_train_loader(
        stage.train_data, stage.train_transform, micro_batch, accelerator.num_processes, accelerator.process_index,
        args.seed, start_batch=start_step * grad_accum, num_workers=stage.data_args.num_workers,
    )
    val_loader = None
    if stage.val_data is not None:
        val_loader = build_eval_loader(stage.val_data, stage.val_transform, micro_batch * 2, accelerator.num_processes,
                                       accelerator.process_index, stage.data_args.num_workers)
    logger.info(
        f"{stage.describe()}; steps {start_step}->{max_steps}, global batch {args.batch_size} = "
        f"{accelerator.num_processes} proc x {micro_batch} x {grad_accum} accum, peak lr {args.peak_lr:.3g}",
        main_process_only=True,
    )

    progress = Progress(accelerator, start_step, max_steps, args.batch_size, args.no_progress_bar)
    batches = iter(loader)
    final_val: Dict[str, float] = {}
    step = start_step
    while step < max_steps:
        lr = apply_schedule(stage.optimizer, args, step, max_steps)
        log_now = should(step + 1, args.log_every, max_steps)
        out = stage.train_step(step, lr, batches, log_now)
        step += 1
        rate = progress.update(loss=out.loss, lr=lr)
        if log_now:
            metrics = reduce_mean(accelerator, out.metrics)
            metrics.update(out.extras)
            metrics.update({"lr": lr, "samples_per_s": rate})
            accelerator.log(metrics, step=step)
        validate_now = should(step, args.validate_every, max_steps) if args.validate_every > 0 else step == max_steps
        if val_loader is not None and validate_now:
            final_val = {f"val/{k}": v for k, v in stage.validate(val_loader).items()}
            if ema is not None:
                with ema_weights(stage.unwrapped, ema):
                    final_val.update({f"val_ema/{k}": v for k, v in stage.validate(val_loader).items()})
            accelerator.log(final_val, step=step)
            shown = [k for k in final_val if k.split("/")[-1] in ("Lm", "Lt", "Accm", "Acct", "psnr", "l1", "l2",
                                                                  "codebook_usage")]
            logger.info(f"step {step}: " + ", ".join(f"{k} {final_val[k]:.4g}" for k in shown), main_process_only=True)
        if should(step, args.save_every, max_steps):
            tensors = dict(stage.checkpoint_tensors())
            extra = {}
            if ema is not None:
                tensors[EMA_FILE] = ema.shadow
                extra["ema"] = {"decay": ema.decay, "num_updates": ema.num_updates}
            ckpt.save(step, tensors, extra)
    progress.close()

    # Export: EMA, raw, or the better of the two
    use_ema = use_ema_for_export(args, ema, final_val, key=stage.export_key, higher_is_better=stage.higher_is_better)
    exported = exported_copy(accelerator, stage.model, ema if use_ema else None)
    if accelerator.is_main_process:
        summary = {"step": max_steps, "exported_weights": "ema" if use_ema else "raw", **final_val}
        extra = stage.export(exported, summary, final_val)
        write_run_config(args.output_dir, {**run_config, "final": summary, **(extra or {})})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


__all__ = ["EMA_FILE", "StepOutput", "TrainingStage", "train"]
