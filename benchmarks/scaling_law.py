"""VAR's scaling law in miniature: train a family of transformer sizes on one frozen tokenizer, evaluate each on the test
split, fit power laws in model size and training compute, and draw the plots of the paper's Fig. 5 (arXiv 2404.02905).

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/scaling_law.py --output-dir runs/scaling
    python benchmarks/scaling_law.py --output-dir runs/scaling --resume      # continue after an interruption

One command runs everything, in order, each stage skipped when its result is already on disk (with `--resume`):

1. `var-hf tokenize`: the Fashion-MNIST train and test splits encoded once by the frozen VQVAE (`--vqvae`).
2. `python -m var_hf.training.train_var` for each depth of the family: the package's own training entry point, with
   the same seed (so the same data order and the same initialisation rule), the same batch size, learning-rate
   schedule and number of steps. Budget rule: every model sees the same number of training tokens
   (`--max-steps x --batch-size` images of `sum(pn^2)` tokens); training compute is then C = 6 N T, proportional to N.
   Each run logs to `<output-dir>/runs/d<depth>/train.log` and resumes from its latest checkpoint.
3. Teacher-forced evaluation on the test split (no label smoothing, no class dropout): mean and finest-scale
   cross-entropy (the reference's Lm and Lt) and token error rates (100 - Accm, 100 - Acct), for the final model and
   every kept checkpoint (the compute curves).
4. Fits L = (beta * N)^alpha by least squares on log10 L against log10 N (N: parameters without the embeddings, as the
   paper counts: the class, position, level and input-word embeddings are left out; blocks, head norm and head are in),
   the Pearson r of the log-log points, and L = (gamma * C)^alpha_C on the compute-efficient frontier of all evaluated
   checkpoints. Writes `results.json`, `results.md` (table and fits) and `scaling_size.png`, `scaling_compute.png`.

Family (a small-scale analogue of the paper's width = 64 x depth, heads = depth, head dim 64): width = 16 x depth,
heads = depth, so every head is 16 wide.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_VQVAE = os.path.join(os.path.dirname(HERE), "src", "var_hf", "default_model", "vqvae")
# Names of the VARTransformer parameters that the paper's N leaves out (embeddings).
EMBEDDING_PREFIXES = ("class_embedding.", "pos_start", "pos_embedding", "level_embedding.", "word_embed.")
METRICS = ("Lm", "Lt", "Errm", "Errt")
METRIC_TITLES = {"Lm": "mean test loss", "Lt": "finest-scale test loss", "Errm": "mean token error rate (%)",
                 "Errt": "finest-scale token error rate (%)"}
# The paper's exponents (Fig. 5 legends; ImageNet 256, depths 6-30): L = (beta N)^alpha; every fit there has r near
# -0.998. Only alpha is compared here (beta depends on the unit of N).
PAPER_ALPHAS = {"Lt": -0.23, "Lm": -0.20, "Errt": -0.016, "Errm": -0.010}


# ----------------------------------------------------------------------------------------------------------------------
# Fitting (no torch: tested on its own)
# ----------------------------------------------------------------------------------------------------------------------


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> Dict[str, float]:
    """Least-squares fit of log10 y = alpha * log10 x + alpha * log10 beta, i.e. y = (beta * x)^alpha.

    Returns alpha, beta, the Pearson r of (log10 x, log10 y), and the fit's residual rms in log10 units. Needs at
    least 3 points, all finite and positive."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError(f"fit_power_law needs two equally long 1-d sequences of at least 3 points, got {x.shape}, {y.shape}.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y)) and np.all(x > 0) and np.all(y > 0)):
        raise ValueError(f"fit_power_law needs finite positive values, got x={x.tolist()}, y={y.tolist()}.")
    lx, ly = np.log10(x), np.log10(y)
    if np.ptp(lx) == 0:
        raise ValueError("fit_power_law needs at least two different x values.")
    alpha, intercept = np.polyfit(lx, ly, 1)
    r = float(np.corrcoef(lx, ly)[0, 1]) if np.ptp(ly) > 0 else 0.0
    residual = ly - (alpha * lx + intercept)
    # beta = 10^(intercept / alpha) over- or underflows for the near-zero exponents of error rates: None then.
    log_beta = intercept / alpha if alpha != 0 else math.inf
    beta = float(10 ** log_beta) if abs(log_beta) < 300 else None
    return {"alpha": float(alpha), "beta": beta, "log10_beta": float(log_beta) if math.isfinite(log_beta) else None,
            "intercept_log10": float(intercept), "r": r, "rms_log10": float(np.sqrt(np.mean(residual ** 2))),
            "points": int(len(x))}


def power_law(fit: Dict[str, float], x) -> np.ndarray:
    """The fitted curve at x (from the log-log line, so it holds when beta over- or underflows)."""
    return 10 ** (fit["alpha"] * np.log10(np.asarray(x, dtype=np.float64)) + fit["intercept_log10"])


def describe_fit(fit: Dict[str, float], variable: str = "N") -> str:
    beta = f"{fit['beta']:.3g}" if fit["beta"] is not None else f"1e{fit['log10_beta']:.1f}"
    return f"({beta} {variable})^{fit['alpha']:.4f}"


def compute_frontier(points: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The compute-efficient frontier of (compute, loss) points: those with a lower loss than every point of less or
    equal compute, sorted by compute."""
    frontier, best = [], math.inf
    for c, loss in sorted(points, key=lambda p: (p[0], p[1])):
        if loss < best:
            frontier.append((c, loss))
            best = loss
    return frontier


def non_embedding_parameters(named_shapes: Dict[str, Sequence[int]]) -> int:
    """N as the paper counts it: every parameter but the embeddings (`EMBEDDING_PREFIXES`)."""
    return int(sum(int(np.prod(shape)) for name, shape in named_shapes.items() if not name.startswith(EMBEDDING_PREFIXES)))


# ----------------------------------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------------------------------


def log(msg: str, log_path: Optional[str] = None):
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    if log_path:
        with open(log_path, "a") as f:
            f.write(line + "\n")


def run_logged(cmd: List[str], log_path: str):
    """Run a command with its output appended to `log_path`; a failure raises with the log's last lines."""
    with open(log_path, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        with open(log_path) as f:
            tail = "".join(f.readlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {rc}); see {log_path}:\n{tail}")


def tokenize(args, study_log: str) -> str:
    tokens = os.path.join(args.output_dir, "tokens")
    if os.path.exists(os.path.join(tokens, "var_tokens.json")):
        log(f"tokens: {tokens} exists, kept", study_log)
        return tokens
    log(f"tokens: {'copying ' + args.tokens_from if args.tokens_from else 'encoding the train and test splits'}", study_log)
    cmd = ["var-hf", "tokenize", "--vqvae", args.vqvae, "--output-dir", tokens, "--splits", "train,test",
           "--max-samples", str(max(args.train_samples, args.test_samples)), "--no-progress-bar"]
    if args.tokens_from:
        shutil.copytree(args.tokens_from, tokens)
    else:
        run_logged(cmd, os.path.join(args.output_dir, "tokenize.log"))
    return tokens


def train_command(args, tokens: str, depth: int, run_dir: str) -> List[str]:
    save_every = max(args.max_steps // args.checkpoints, 1)
    return [
        sys.executable, "-m", "var_hf.training.train_var", "--vqvae", args.vqvae, "--tokenized-dataset", tokens,
        "--depth", str(depth), "--embed-dim", str(args.width_per_depth * depth), "--num-heads", str(depth),
        "--max-train-samples", str(args.train_samples), "--val-split", "test", "--validate-every", "-1",
        "--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--warmup-ratio", str(args.warmup_ratio), "--seed", str(args.seed), "--output-dir", run_dir,
        "--save-every", str(save_every), "--keep-last", str(args.checkpoints + 1), "--log-every", "10",
        "--export-weights", "raw", "--no-card-samples", "--no-progress-bar", "--resume", "latest",
    ]


def train(args, tokens: str, depth: int, study_log: str) -> str:
    from var_hf.training.export import transformer_folder

    run_dir = os.path.join(args.output_dir, "runs", f"d{depth}")
    done = os.path.join(run_dir, "STUDY_DONE")
    if os.path.exists(done):
        log(f"d{depth}: trained, kept", study_log)
        return run_dir
    os.makedirs(run_dir, exist_ok=True)
    start = time.time()
    log(f"d{depth}: training (width {args.width_per_depth * depth}, {depth} heads, {args.max_steps} steps)", study_log)
    run_logged(train_command(args, tokens, depth, run_dir), os.path.join(run_dir, "train.log"))
    transformer_folder(run_dir)  # raises if the run exported nothing
    with open(done, "w") as f:
        f.write(f"{time.time() - start:.1f}\n")
    log(f"d{depth}: trained in {time.time() - start:.0f} s", study_log)
    return run_dir


def load_test_tokens(tokens: str, num: int):
    import datasets
    import torch

    test = datasets.load_from_disk(tokens)["test"]
    test = test.select(range(min(num, len(test))))
    return (torch.from_numpy(np.asarray(test.with_format("numpy")["tokens"], dtype=np.int64)),
            torch.from_numpy(np.asarray(test["label"], dtype=np.int64)))


def evaluate_model(model, vqvae, tokens_BL, labels_B, batch_size: int = 250) -> Dict[str, float]:
    """Teacher-forced test metrics: Lm, Lt (cross-entropy, nats), Errm, Errt (token error rate, %)."""
    import torch
    import torch.nn.functional as F

    cfg = model.config
    last = cfg.patch_nums[-1] ** 2
    sums = np.zeros(4)
    model.eval()
    with torch.no_grad():
        for gt_BL, lab_B in zip(tokens_BL.split(batch_size), labels_B.split(batch_size)):
            maps = [gt_BL[:, b:e] for b, e in cfg.scale_boundaries]
            logits_BLV = model(lab_B, vqvae.teacher_forcing_input(maps)).logits
            ce_BL = F.cross_entropy(logits_BLV.flatten(0, 1), gt_BL.flatten(), reduction="none").view_as(gt_BL)
            err_BL = (logits_BLV.argmax(-1) != gt_BL).double()
            sums += len(gt_BL) * np.array([ce_BL.mean().item(), ce_BL[:, -last:].mean().item(),
                                           100 * err_BL.mean().item(), 100 * err_BL[:, -last:].mean().item()])
    out = dict(zip(METRICS, (sums / len(tokens_BL)).tolist()))
    if not all(math.isfinite(v) for v in out.values()):
        raise RuntimeError(f"Non-finite test metrics {out}: the model diverged.")
    return out


def evaluate_run(args, run_dir: str, depth: int, vqvae, test, study_log: str) -> Dict:
    from safetensors.torch import load_file

    from var_hf.modeling_var import VARTransformer
    from var_hf.training.checkpointing import list_checkpoints
    from var_hf.training.export import transformer_folder

    path = os.path.join(args.output_dir, "eval", f"d{depth}.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    model = VARTransformer.from_pretrained(transformer_folder(run_dir)).float().eval()
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    n = non_embedding_parameters(shapes)
    tokens_per_step = args.batch_size * model.config.seq_len
    result = {"depth": depth, "width": model.config.embed_dim, "heads": model.config.num_heads,
              "N": n, "N_total": int(sum(p.numel() for p in model.parameters())), "steps": args.max_steps,
              "tokens": args.max_steps * tokens_per_step, "compute": 6.0 * n * args.max_steps * tokens_per_step,
              **evaluate_model(model, vqvae, *test)}
    curve = []
    for ckpt in list_checkpoints(run_dir):
        step = int(os.path.basename(ckpt).split("-")[-1])
        if step >= args.max_steps:
            continue
        state = load_file(os.path.join(ckpt, "model.safetensors"))
        model.load_state_dict(state, strict=True)
        metrics = evaluate_model(model, vqvae, *test)
        curve.append({"step": step, "compute": 6.0 * n * step * tokens_per_step, **metrics})
    curve.append({"step": args.max_steps, "compute": result["compute"], **{k: result[k] for k in METRICS}})
    result["curve"] = curve
    from var_hf.file_utils import write_json_atomically

    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomically(path, result)
    log(f"d{depth}: N={n:,} Lm={result['Lm']:.4f} Lt={result['Lt']:.4f} Errm={result['Errm']:.2f} "
        f"Errt={result['Errt']:.2f}", study_log)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------------


def fits_for(results: List[Dict]) -> Dict[str, Dict]:
    fits = {f"{m}_vs_N": fit_power_law([r["N"] for r in results], [r[m] for r in results]) for m in METRICS}
    for m in ("Lm", "Lt"):
        points = [(p["compute"], p[m]) for r in results for p in r["curve"] if p["compute"] > 0]
        frontier = compute_frontier(points)
        if len(frontier) >= 3:
            fits[f"{m}_vs_C_frontier"] = fit_power_law(*zip(*frontier))
    return fits


def markdown(results: List[Dict], fits: Dict[str, Dict], args) -> str:
    lines = ["| depth | width | heads | N (non-emb.) | N (total) | tokens seen | C = 6NT (FLOPs) | Lm | Lt | Errm (%) | Errt (%) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['depth']} | {r['width']} | {r['heads']} | {r['N']:,} | {r['N_total']:,} | {r['tokens']:,} | "
                     f"{r['compute']:.3g} | {r['Lm']:.4f} | {r['Lt']:.4f} | {r['Errm']:.2f} | {r['Errt']:.2f} |")
    lines += ["", "| fit | law | alpha | Pearson r (log-log) | rms (log10) | points | paper: alpha, r |",
              "|---|---|---|---|---|---|---|"]
    for name, fit in fits.items():
        metric = name.split("_")[0]
        paper = PAPER_ALPHAS.get(metric) if name.endswith("_vs_N") else None
        paper_text = f"{paper}, -0.998" if paper else "-"
        law = describe_fit(fit, "C" if "_vs_C" in name else "N")
        lines.append(f"| {name} | {law} | {fit['alpha']:.4f} | {fit['r']:.4f} | {fit['rms_log10']:.4f} | "
                     f"{fit['points']} | {paper_text} |")
    return "\n".join(lines) + "\n"


def save_png(fig, path: str) -> str:
    """Lay out, write (atomically) and close a matplotlib figure; returns `path`."""
    import matplotlib.pyplot as plt

    from var_hf.file_utils import atomic_write

    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def plot(results: List[Dict], fits: Dict[str, Dict], out_dir: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    n = np.array([r["N"] for r in results], dtype=np.float64)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    grid = np.geomspace(n.min() / 1.3, n.max() * 1.3, 50)
    for ax, m in zip(axes, METRICS):
        fit = fits[f"{m}_vs_N"]
        ax.loglog(n, [r[m] for r in results], "o", color="tab:blue")
        for r in results:
            ax.annotate(f"d{r['depth']}", (r["N"], r[m]), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.loglog(grid, power_law(fit, grid), "--", color="tab:red", label=f"{describe_fit(fit)}\nr = {fit['r']:.3f}")
        ax.set_xlabel("N (parameters without embeddings)")
        ax.set_title(METRIC_TITLES[m], fontsize=10)
        ax.legend(fontsize=8)
    written.append(save_png(fig, os.path.join(out_dir, "scaling_size.png")))

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, m in zip(axes, ("Lm", "Lt")):
        for r in results:
            pts = [(p["compute"], p[m]) for p in r["curve"] if p["compute"] > 0]
            ax.loglog(*zip(*pts), "-o", markersize=3, label=f"d{r['depth']}")
        fit = fits.get(f"{m}_vs_C_frontier")
        if fit:
            cs = np.geomspace(min(p["compute"] for r in results for p in r["curve"] if p["compute"] > 0),
                              max(r["compute"] for r in results), 50)
            ax.loglog(cs, power_law(fit, cs), "--", color="k",
                      label=f"frontier {describe_fit(fit, 'C')}, r = {fit['r']:.3f}")
        ax.set_xlabel("training compute C = 6 N T (FLOPs)")
        ax.set_title(METRIC_TITLES[m], fontsize=10)
        ax.legend(fontsize=7)
    written.append(save_png(fig, os.path.join(out_dir, "scaling_compute.png")))
    return written


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True, help="Study folder (tokens, runs, eval, results, plots).")
    parser.add_argument("--vqvae", default=DEFAULT_VQVAE, help="Frozen tokenizer (default: the bundled model's).")
    parser.add_argument("--tokens-from", default=None, help="Copy an existing `var-hf tokenize` folder instead.")
    parser.add_argument("--depths", default="1,2,3,4,5", help="Comma-separated depths of the family.")
    parser.add_argument("--width-per-depth", type=int, default=16, help="Width = this x depth; heads = depth.")
    parser.add_argument("--max-steps", type=int, default=240, help="Optimizer steps, the same for every model.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="Peak learning rate, the same for every model.")
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--checkpoints", type=int, default=3, help="Evaluated checkpoints per run (compute curves).")
    parser.add_argument("--train-samples", type=int, default=12000)
    parser.add_argument("--test-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="Continue a study in --output-dir.")
    parser.add_argument("--plots-dir", default=None, help="Also copy the PNGs here (e.g. docs/images).")
    args = parser.parse_args(argv)
    args.depths = [int(d) for d in args.depths.split(",") if d.strip()]
    if len(args.depths) < 3 or len(set(args.depths)) != len(args.depths) or min(args.depths) < 1:
        parser.error(f"--depths needs at least 3 different positive depths, got {args.depths}.")
    for name in ("max_steps", "batch_size", "checkpoints", "train_samples", "test_samples", "width_per_depth"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1.")
    if not os.path.exists(os.path.join(args.vqvae, "config.json")) and not os.path.exists(
            os.path.join(args.vqvae, "vqvae", "config.json")):
        parser.error(f"--vqvae {args.vqvae}: no MultiScaleVQVAE there (config.json or vqvae/config.json).")
    if os.path.isdir(args.output_dir) and os.listdir(args.output_dir) and not args.resume:
        parser.error(f"--output-dir {args.output_dir} is not empty; pass --resume to continue that study.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    study_log = os.path.join(args.output_dir, "study.log")
    from var_hf.file_utils import atomic_write, write_json_atomically, write_text_atomically

    config_path = os.path.join(args.output_dir, "study_config.json")
    config = {k: v for k, v in vars(args).items() if k not in ("resume", "plots_dir")}
    if os.path.exists(config_path):
        with open(config_path) as f:
            previous = json.load(f)
        if previous != json.loads(json.dumps(config)):
            raise SystemExit(f"{config_path} holds another study's settings ({previous}); use another --output-dir.")
    write_json_atomically(config_path, config)
    log(f"study: depths {args.depths}, width {args.width_per_depth} x depth, {args.max_steps} steps x batch "
        f"{args.batch_size} for every model (same tokens seen)", study_log)

    tokens = tokenize(args, study_log)
    run_dirs = {d: train(args, tokens, d, study_log) for d in args.depths}

    from var_hf.training.export import load_frozen_vqvae

    vqvae = load_frozen_vqvae(args.vqvae, "cpu")
    test = load_test_tokens(tokens, args.test_samples)
    results = [evaluate_run(args, run_dirs[d], d, vqvae, test, study_log) for d in args.depths]
    fits = fits_for(results)
    write_json_atomically(os.path.join(args.output_dir, "results.json"), {"models": results, "fits": fits})
    table = markdown(results, fits, args)
    write_text_atomically(os.path.join(args.output_dir, "results.md"), table)
    print(table)
    for path in plot(results, fits, args.output_dir):
        if args.plots_dir:
            os.makedirs(args.plots_dir, exist_ok=True)
            with open(path, "rb") as src, atomic_write(os.path.join(args.plots_dir, os.path.basename(path)), "wb") as dst:
                dst.write(src.read())
    log(f"study: done; results in {args.output_dir}/results.md", study_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
