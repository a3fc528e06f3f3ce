"""Collaborative decoding (CoDe) against the large model alone: FLOPs, wall time and sample quality for several
`draft_steps` k, in one run.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/bench_collaborative.py \
        --drafter runs/scaling/runs/d6 --refiner runs/scaling/runs/d2 --quality-per-class 20

Measured, for each k in `--draft-steps` (K = the large model alone, 0 = the small model alone):

- transformer FLOPs per image (`torch.utils.flop_counter.FlopCounterMode`; classifier-free guidance doubles the
  batch, as in sampling): the drafter's scales, the refiner's one-pass prefix fill and the refiner's scales. Counted
  for the given trained pair and for random-weight shapes of the named configurations (`--shapes d30:d16`, built on
  the meta device: nothing is allocated or run, the counter reads the operations' shapes);
- the whole pipeline call's FLOPs (VQVAE decoding included) and wall time per image for the trained pair (median of
  `--repeats` calls of `--batch-size` images, CPU unless `--device`);
- with `--quality-per-class N`: N samples per class drawn with fixed seeds (the same seeds for every k), scored
  against the Fashion-MNIST test split with the domain classifier (`var_hf.evaluation`): class accuracy, FID,
  precision and recall.

Prints a Markdown table per measurement and writes everything to `--output` (JSON).
"""

import argparse
import os
import statistics
import sys
import time
from typing import Dict, List

import torch
from torch.utils.flop_counter import FlopCounterMode

from var_hf import DEFAULT_MODEL, MultiScaleVQVAE, VARScaleScheduler, VARTransformer, VARTransformerConfig
from var_hf.file_utils import write_json_atomically
from var_hf.pipelines.pipeline_var_collaborative import VARCollaborativePipeline, load_refiner, prefill_kv_cache

SAMPLING = dict(guidance_scale=1.5, top_k=0, top_p=0.0)


def transformer_flops(drafter: VARTransformer, refiner: VARTransformer, draft_steps: int, batch_size: int = 1) -> Dict[str, int]:
    """FLOPs of the transformer work of one collaborative sampling call of `batch_size` images (both guidance halves):
    the drafter's scales 0..k-1, the refiner's prefix fill over them and its scales k..K-1. The work does not depend on
    the sampled tokens, so zero inputs of the right shapes stand in for them (on the models' device; meta works)."""
    cfg = drafter.config
    K, device = len(cfg.patch_nums), drafter.pos_embedding.device
    labels_2B = torch.full((2 * batch_size,), cfg.num_classes, dtype=torch.long, device=device)
    counts = {}
    with torch.no_grad():
        for name, model, scales in (("drafter", drafter, range(draft_steps)),
                                    ("refiner", refiner, range(draft_steps, K))):
            if not len(scales):
                counts[name], counts[f"{name}_prefix"] = 0, 0
                continue
            cond = model.embed_class(labels_2B)
            constants = model.sampling_constants(cond)
            inputs = [model.embed_first_scale(cond)] + [
                model.embed_next_scale(i, torch.zeros(2 * batch_size, pn * pn, cfg.vq_embed_dim, device=device))
                for i, pn in enumerate(cfg.patch_nums) if i > 0
            ]
            cache = model.new_kv_cache()
            with FlopCounterMode(display=False) as prefix_counter:
                if scales[0] > 0:
                    cache, _ = prefill_kv_cache(model, inputs[:scales[0]], constants, cache)
            with FlopCounterMode(display=False) as counter:
                for i in scales:
                    model.forward_scale(inputs[i], cond, cache, constants=constants)
            counts[f"{name}_prefix"] = prefix_counter.get_total_flops()
            counts[name] = counter.get_total_flops()
    counts["total"] = counts["drafter"] + counts["refiner"] + counts["refiner_prefix"]
    return counts


def meta_model(name: str) -> VARTransformer:
    """A random-weight transformer of a named configuration (`d16`, `d30`, ...) on the meta device."""
    with torch.device("meta"):
        return VARTransformer(VARTransformerConfig.from_named(f"var_{name}"))


def load_transformer(path: str) -> VARTransformer:
    return load_refiner(path).float().eval()


def markdown(rows: List[Dict], columns: List[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quality(pipe, draft_steps: int, per_class: int, classifier, reference, seed: int) -> Dict[str, float]:
    from var_hf.evaluation import images_to_array
    from var_hf.evaluation.sample_metrics import compute_sample_metrics

    num_classes = pipe.transformer.config.num_classes
    labels = [c for c in range(num_classes) for _ in range(per_class)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]  # same seeds for every k
    images = pipe(labels, draft_steps=draft_steps, generator=generators, output_type="np", **SAMPLING).images
    arrays = images_to_array((images * 255).round().clip(0, 255).astype("uint8"))
    results, _ = compute_sample_metrics(arrays, labels, classifier, reference)
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", default=DEFAULT_MODEL, help="Pipeline folder for the VQVAE and scheduler.")
    parser.add_argument("--drafter", required=True, help="Large transformer (folder, or a pipeline/training folder).")
    parser.add_argument("--refiner", required=True, help="Small transformer, same tokenizer.")
    parser.add_argument("--draft-steps", default=None, help="Comma-separated k values (default: every k from K to 0).")
    parser.add_argument("--shapes", default="d30:d16", help="drafter:refiner named shapes counted on the meta device "
                                                            "('' to skip).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality-per-class", type=int, default=0, help="Samples per class for quality (0: skip).")
    parser.add_argument("--reference-samples", type=int, default=2000)
    parser.add_argument("--domain-classifier", default=os.path.join(DEFAULT_MODEL, "domain_classifier"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="JSON file for every figure.")
    args = parser.parse_args(argv)
    for name in ("batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    drafter, refiner = load_transformer(args.drafter), load_transformer(args.refiner)
    vqvae = MultiScaleVQVAE.from_pretrained(os.path.join(args.pipeline, "vqvae")).eval()
    scheduler = VARScaleScheduler.from_pretrained(os.path.join(args.pipeline, "scheduler"))
    pipe = VARCollaborativePipeline(vqvae=vqvae, transformer=drafter, refiner=refiner, scheduler=scheduler).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    K = len(drafter.config.patch_nums)
    ks = [int(k) for k in args.draft_steps.split(",")] if args.draft_steps else list(range(K, -1, -1))
    report: Dict[str, object] = {"settings": {**vars(args), "sampling": SAMPLING, "torch": torch.__version__,
                                              "threads": torch.get_num_threads()}}
    n_d, n_r = (sum(p.numel() for p in m.parameters()) for m in (drafter, refiner))
    print(f"drafter {args.drafter} ({n_d:,} parameters), refiner {args.refiner} ({n_r:,}); K = {K}", flush=True)

    # 1. FLOPs and wall time per image, trained pair.
    rows, base = [], None
    labels = [i % drafter.config.num_classes for i in range(args.batch_size)]
    for k in ks:
        flops = transformer_flops(drafter, refiner, k)
        with FlopCounterMode(display=False) as counter:
            pipe(labels[:1], draft_steps=k, generator=torch.Generator().manual_seed(0), **SAMPLING)
        times = []
        for r in range(args.repeats):
            start = time.perf_counter()
            pipe(labels, draft_steps=k, generator=torch.Generator().manual_seed(r), output_type="np", **SAMPLING)
            times.append((time.perf_counter() - start) / args.batch_size)
        row = {"k": k, "transformer_GFLOPs": flops["total"] / 1e9, "prefix_GFLOPs": flops["refiner_prefix"] / 1e9,
               "pipeline_GFLOPs": counter.get_total_flops() / 1e9, "ms_per_image": 1e3 * statistics.median(times)}
        base = base or row
        row["flops_speedup"] = base["transformer_GFLOPs"] / row["transformer_GFLOPs"]
        row["time_speedup"] = base["ms_per_image"] / row["ms_per_image"]
        rows.append(row)
        print(markdown([row], list(row)).splitlines()[-1], flush=True)
    report["trained_pair"] = rows
    print("\nTrained pair, per image (k = drafted scales; speed-ups against the first k):")
    print(markdown(rows, list(rows[0])))

    # 2. FLOPs of the real shapes, random weights on the meta device.
    if args.shapes:
        big, small = args.shapes.split(":")
        d_big, d_small = meta_model(big), meta_model(small)
        K_big = len(d_big.config.patch_nums)
        shape_rows, base = [], None
        for k in range(K_big, -1, -1):
            flops = transformer_flops(d_big, d_small, k)
            row = {"k": k, "drafter_GFLOPs": flops["drafter"] / 1e9, "refiner_prefix_GFLOPs": flops["refiner_prefix"] / 1e9,
                   "refiner_GFLOPs": flops["refiner"] / 1e9, "total_GFLOPs": flops["total"] / 1e9}
            base = base or row
            row["speedup"] = base["total_GFLOPs"] / row["total_GFLOPs"]
            shape_rows.append(row)
        report["shapes"] = {"drafter": big, "refiner": small, "rows": shape_rows}
        print(f"\nRandom-weight {big} drafter / {small} refiner, transformer GFLOPs per image (guidance on):")
        print(markdown(shape_rows, list(shape_rows[0])))

    # 3. Sample quality.
    if args.quality_per_class:
        from var_hf.evaluation import load_domain_classifier
        from var_hf.evaluation.references import load_reference

        classifier = load_domain_classifier(args.domain_classifier)
        reference = load_reference("fashion-mnist", split="test", max_samples=args.reference_samples,
                                   resolution=vqvae.config.image_size, seed=args.seed)
        quality_rows = []
        for k in ks:
            start = time.perf_counter()
            q = quality(pipe, k, args.quality_per_class, classifier, reference, args.seed)
            quality_rows.append({"k": k, **q, "seconds": time.perf_counter() - start})
            print(markdown([quality_rows[-1]], list(quality_rows[-1])).splitlines()[-1], flush=True)
        report["quality"] = quality_rows
        print(f"\nQuality ({args.quality_per_class} per class, domain classifier, Fashion-MNIST test reference):")
        print(markdown(quality_rows, list(quality_rows[0])))

    if args.output:
        write_json_atomically(args.output, report, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
