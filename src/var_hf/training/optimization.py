"""Optimisation: the reference's learning-rate and weight-decay schedules, AdamW parameter groups, batch sizes and the
EMA of the weights."""

import contextlib
import math
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch

from var_hf.training.arguments import TrainingArguments


def warmup_steps_for(args: TrainingArguments, max_steps: int) -> int:
    return args.warmup_steps if args.warmup_steps is not None else round(args.warmup_ratio * max_steps)


def total_steps(args: TrainingArguments, num_train_samples: int) -> int:
    if args.max_steps is not None:
        return args.max_steps
    return max(1, int(args.epochs * num_train_samples // args.batch_size))


def per_process_batch_size(batch_size: int, num_processes: int, grad_accum: int) -> int:
    """Samples per process and micro-batch; the global batch must split evenly."""
    if grad_accum < 1:
        raise ValueError(f"--gradient-accumulation-steps must be >= 1, got {grad_accum}.")
    if batch_size < 1 or batch_size % (num_processes * grad_accum):
        raise ValueError(
            f"--batch-size {batch_size} (global, per optimizer step) must be a positive multiple of num_processes x "
            f"gradient_accumulation_steps = {num_processes} x {grad_accum}."
        )
    return batch_size // (num_processes * grad_accum)


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


def apply_schedule(optimizer: torch.optim.Optimizer, args: TrainingArguments, step: int, max_steps: int) -> float:
    """Set every group's lr and weight decay for `step`; return the lr."""
    warmup = warmup_steps_for(args, max_steps)
    ratio = lr_ratio(step, warmup, max_steps, args.lr_schedule, args.warmup_start, args.final_lr_ratio)
    lr = args.peak_lr * ratio
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


def build_adamw(groups, args: TrainingArguments, betas: Optional[Sequence[float]] = None) -> torch.optim.AdamW:
    betas = tuple(betas) if betas is not None else (args.adam_beta1, args.adam_beta2)
    # Weight decay and lr are set every step by `apply_schedule`.
    return torch.optim.AdamW(groups, lr=args.peak_lr, betas=betas, weight_decay=0.0)


# ----------------------------------------------------------------------------------------------------------------------
# EMA
# ----------------------------------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's trainable parameters, kept in float32.

    The effective decay ramps up as `min(decay, (1 + n) / (10 + n))` over the first updates, so early weights are
    not frozen into the average. Checkpoints hold it as `ema.safetensors` (see `checkpointing.py`), never a pickle.

    Kept instead of diffusers' `EMAModel`, for a measured reason: `EMAModel.step` returns decay 0 at its first update
    (it copies the weights; this class uses 0.1 there), keeps the shadow in the parameters' dtype (bf16 weights would
    average in bf16) and updates with `sub_(...)` rather than `lerp_`, so every EMA weight of an existing recipe would
    change (tests/test_training_ema.py shows the difference).
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
            raise ValueError("The checkpoint's EMA does not hold the same parameters as this model.")
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


def use_ema_for_export(args: TrainingArguments, ema: Optional[EMA], final_val: Dict[str, float], key: str,
                       higher_is_better: bool) -> bool:
    """`--export-weights`: 'ema', 'raw', or 'best' (EMA unless the raw weights validate better on `key`)."""
    if ema is None or args.export_weights == "raw":
        return False
    if args.export_weights == "ema":
        return True
    raw, averaged = final_val.get(f"val/{key}"), final_val.get(f"val_ema/{key}")
    if raw is None or averaged is None:
        return True
    return averaged >= raw if higher_is_better else averaged <= raw


__all__ = [
    "EMA",
    "apply_schedule",
    "build_adamw",
    "ema_weights",
    "lr_ratio",
    "param_groups",
    "per_process_batch_size",
    "total_steps",
    "use_ema_for_export",
    "warmup_steps_for",
    "weight_decay_at",
]
