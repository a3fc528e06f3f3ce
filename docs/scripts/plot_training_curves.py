"""Draw the training curves of a two-stage var_hf run (VQVAE, then VAR) from the runs' `logs/metrics.jsonl`.

    pip install -e ".[plots]"
    python docs/scripts/plot_training_curves.py --vqvae-run RUN/vqvae [RUN/decoder ...] \
        --var-run RUN/var [RUN/var2 ...] --out docs/images/default_model_training.png

Panels: the tokenizer's reconstruction loss and validation PSNR; the transformer's mean and finest-scale cross-entropy
(train, and validation where logged); its per-scale token accuracy (train, smoothed over 10 logs).
"""

import argparse
import json
import os
import sys

import numpy as np


def read_metrics(run_dir: str):
    path = os.path.join(run_dir, "logs", "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: pass the run's output folder (it holds logs/metrics.jsonl).")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def chain_runs(run_dirs):
    """The rows of consecutive runs on one step axis (a continuation's steps follow its parent's last step), and the
    steps where each continuation starts."""
    rows, offset, joins = [], 0, []
    for run_dir in run_dirs:
        run_rows = read_metrics(run_dir)
        if rows:
            joins.append(offset)
        rows += [{**row, "step": row["step"] + offset} for row in run_rows]
        offset += max((row["step"] for row in run_rows), default=0)
    return rows, joins


def series(rows, key):
    points = [(row["step"], row[key]) for row in rows if key in row and np.isfinite(row[key])]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def smooth(steps: np.ndarray, values: np.ndarray, window: int):
    """Trailing moving average (no edge artefacts: the first window-1 points are dropped)."""
    if len(values) < window:
        return steps, values
    return steps[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vqvae-run", required=True, nargs="+",
                        help="train-vqvae output folder; several: a run and its fine-tunes (--init-from), in order")
    parser.add_argument("--var-run", required=True, nargs="+",
                        help="train-var output folder; several: a run and its continuations (--init-from), in order")
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from var_hf.file_utils import atomic_write

    vq_rows, vq_joins = chain_runs(args.vqvae_run)
    var_rows, joins = chain_runs(args.var_run)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))

    ax = axes[0]
    ax.plot(*series(vq_rows, "train/rec_loss"), color="tab:blue", lw=1, label="train reconstruction loss (L1+L2)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("stage 1: VQVAE")
    twin = ax.twinx()
    twin.plot(*series(vq_rows, "val/psnr"), "o-", color="tab:red", label="validation PSNR (dB)")
    twin.set_ylabel("PSNR (dB)")
    ax.legend(loc="upper center", fontsize=8)
    twin.legend(loc="center right", fontsize=8)
    for step in vq_joins:
        ax.axvline(step, color="grey", ls=":", lw=1)
        ax.text(step, 0.3, "decoder fine-tune ", transform=ax.get_xaxis_transform(), rotation=90, ha="right",
                va="center", fontsize=8, color="grey")

    ax = axes[1]
    for key, style in (("train/Lm", "-"), ("train/Lt", "-"), ("val/Lm", "o-"), ("val/Lt", "o-")):
        steps, values = series(var_rows, key)
        if len(steps):
            ax.plot(*(smooth(steps, values, 5) if key.startswith("train") else (steps, values)), style, lw=1, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_title("stage 2: VAR loss (mean / finest scale)")
    for step in joins:
        for axis in axes[1:]:
            axis.axvline(step, color="grey", ls=":", lw=1)
        ax.text(step, ax.get_ylim()[1], " continued", va="top", fontsize=8, color="grey")
    ax.legend(fontsize=8)

    ax = axes[2]
    scale_keys = sorted({k for row in var_rows for k in row if k.startswith("train/acc_")},
                        key=lambda k: int(k.split("_")[-1].split("x")[0]))
    for key in scale_keys:
        steps, values = series(var_rows, key)
        ax.plot(*smooth(steps, values, 10), lw=1, label=key.split("_")[-1])
    ax.set_xlabel("step")
    ax.set_ylabel("token accuracy (%)")
    ax.set_title("stage 2: per-scale accuracy (train)")
    ax.legend(title="scale", fontsize=8)

    fig.tight_layout()
    with atomic_write(args.out, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
