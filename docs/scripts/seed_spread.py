"""Run `var-hf evaluate` at several seeds and report each metric's mean, standard deviation and range.

One 1,000-sample draw moves FID and recall by more than many differences worth knowing about; comparing two models
at the same seeds (each seed draws the same class labels and per-image seeds for both) pairs the draws.

    python docs/scripts/seed_spread.py --seeds 0-9 --output-dir eval/seeds -- --model src/var_hf/default_model \
        --reference fashion-mnist --reference-split test --num-per-class 100 --guidance-scale 3.0 --top-k 0 \
        --top-p 0 --temperature 1.3

Everything after `--` is passed to `var-hf evaluate` as is (without `--seed` / `--output-dir`). Seed N goes to
`OUTPUT/seed-N/`; the reference features computed for the first seed are copied to the others (they do not depend
on the seed), and `OUTPUT/seed_spread.json` gets the per-seed metrics and the summary. Rerunning reuses finished
seeds (`var-hf evaluate` refuses samples drawn by other weights or settings).
"""

import argparse
import json
import math
import os
import shutil
import sys


def parse_seeds(text: str):
    seeds = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        try:
            seeds += list(range(int(low), int(high) + 1)) if high else [int(low)]
        except ValueError:
            raise SystemExit(f"--seeds: {part!r} is not a seed or a range like 0-9") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise SystemExit(f"--seeds {text!r}: give distinct non-negative seeds, e.g. 0-9 or 0,3,7")
    return seeds


def summarise(per_seed):
    summary = {}
    for name in sorted(set.intersection(*(set(m) for m in per_seed.values()))):
        values = [m[name] for m in per_seed.values()]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            continue  # a non-finite metric is reported per seed, never averaged
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        summary[name] = {"mean": mean, "std": std, "min": min(values), "max": max(values)}
    return summary


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, evaluate_args = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, help="e.g. 0-9 or 0,3,7")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(ours)
    seeds = parse_seeds(args.seeds)
    for flag in ("--seed", "--output-dir"):
        if any(a == flag or a.startswith(flag + "=") for a in evaluate_args):
            raise SystemExit(f"{flag} is set by this script; remove it from the arguments after --")

    from var_hf.commands import evaluate
    from var_hf.evaluation.runner import METRICS_FILENAME, REFERENCE_CACHE_FILENAME
    from var_hf.file_utils import atomic_write, write_json_atomically

    per_seed = {}
    for seed in seeds:
        seed_dir = os.path.join(args.output_dir, f"seed-{seed}")
        cached = os.path.join(args.output_dir, f"seed-{seeds[0]}", REFERENCE_CACHE_FILENAME)
        target = os.path.join(seed_dir, REFERENCE_CACHE_FILENAME)
        if seed != seeds[0] and os.path.isfile(cached) and not os.path.exists(target):
            os.makedirs(seed_dir, exist_ok=True)
            with open(cached, "rb") as source, atomic_write(target) as copy:  # no half-written cache on interrupt
                shutil.copyfileobj(source, copy)
        code = evaluate.main(evaluate_args + ["--seed", str(seed), "--output-dir", seed_dir])
        if code != 0:
            print(f"var-hf evaluate failed at seed {seed} (exit code {code})", file=sys.stderr)
            return code
        with open(os.path.join(seed_dir, METRICS_FILENAME)) as f:
            per_seed[str(seed)] = json.load(f)["metrics"]
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(per_seed[str(seed)].items())))

    summary = summarise(per_seed)
    write_json_atomically(os.path.join(args.output_dir, "seed_spread.json"),
                          {"seeds": seeds, "per_seed": per_seed, "summary": summary})
    print(f"\n| metric | mean | std | min | max |  ({len(seeds)} seeds)\n|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['mean']:.4f} | {s['std']:.4f} | {s['min']:.4f} | {s['max']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
