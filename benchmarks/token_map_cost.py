"""What a larger final token map costs the transformer: one training step (AdamW, random tokens) and one sampling call,
for several patch schedules of the same transformer, timed in the same run and reported as ratios to the first.

    python benchmarks/token_map_cost.py    # the default model's shape; under a minute on 2 CPU cores

Defaults: the bundled default model's transformer (depth 6, width 128, 4 heads, 256 codes of 16 dims, 10 classes) at
batch 32, with its 8x8 schedule (1,2,3,4,6,8: 130 tokens) against 16x16 schedules (one 16x16 scale added, 386
tokens; 8 scales, 507 tokens; the reference's 256px schedule, 680 tokens). On CPU the step runs under bf16
autocast, as `accelerate launch --mixed_precision bf16` trains; schedules are timed in turn within each repeat, so a
load change on a shared machine hits all of them alike, and the median over repeats is reported.
"""

import argparse
import contextlib
import statistics
import time

import torch

from bench_var import random_training_batch, train_step_fn
from var_hf import MultiScaleVQVAE, MultiScaleVQVAEConfig, VARPipeline, VARScaleScheduler, VARTransformer, VARTransformerConfig
from var_hf.file_utils import default_device

DEFAULT_SCHEDULES = ["1,2,3,4,6,8", "1,2,3,4,6,8,16", "1,2,3,4,6,8,11,16", "1,2,3,4,5,6,8,10,13,16"]


def parse_schedule(text: str):
    try:
        patch_nums = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise SystemExit(f"--schedules: {text!r} is not a comma-separated list of side lengths like 1,2,4,8") from None
    if list(patch_nums) != sorted(set(patch_nums)) or patch_nums[0] < 1:
        raise SystemExit(f"--schedules: {text!r} must increase strictly from >= 1")
    return patch_nums


def autocast(device):
    return torch.autocast(device.type, dtype=torch.bfloat16)


def build(patch_nums, args, device):
    torch.manual_seed(0)
    config = VARTransformerConfig(
        vocab_size=256, vq_embed_dim=16, num_classes=10, depth=args.depth, embed_dim=args.width,
        num_heads=args.heads, patch_nums=patch_nums,
    )
    transformer = VARTransformer(config).to(device)
    # Final map 8x8 from 32px: two downsamplings (multipliers 1,2,2); 16x16: one (1,2).
    multipliers = (1, 2, 2) if patch_nums[-1] == 8 else (1, 2)
    vqvae = MultiScaleVQVAE(MultiScaleVQVAEConfig(
        base_channels=32, channel_multipliers=multipliers, num_res_blocks=1, vocab_size=256, vq_embed_dim=16,
        patch_nums=patch_nums, use_attention=False,
    )).to(device).eval()
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-4)
    step = train_step_fn(transformer, *random_training_batch(config, args.batch_size, device), optimizer)

    def train_step():
        transformer.train()
        with autocast(device):  # bench_var's step autocasts on CUDA only; training autocasts on CPU too
            step()

    pipe = VARPipeline(vqvae=vqvae, transformer=transformer, scheduler=VARScaleScheduler(patch_nums=list(patch_nums)))
    pipe.set_progress_bar_config(disable=True)

    def sample():
        transformer.eval()
        pipe(class_labels=list(range(10)), generator=torch.Generator(device).manual_seed(0), output_type="pt")

    return config.seq_len, train_step, sample


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedules", nargs="+", default=DEFAULT_SCHEDULES,
                        help="patch schedules; the first is the baseline")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        raise SystemExit("--repeats and --batch-size must be >= 1")
    schedules = [parse_schedule(s) for s in args.schedules]
    device = torch.device(args.device or default_device())

    built = [build(patch_nums, args, device) for patch_nums in schedules]
    for _, train_step, sample in built:  # warm-up (allocator, autocast caches)
        train_step()
        sample()
    step_s = [[] for _ in built]
    sample_s = [[] for _ in built]
    for _ in range(args.repeats):
        for i, (_, train_step, sample) in enumerate(built):
            step_s[i].append(timed(train_step, device))
            sample_s[i].append(timed(sample, device))

    print(f"device {device}, threads {torch.get_num_threads()}, depth {args.depth}, width {args.width}, "
          f"batch {args.batch_size}, median of {args.repeats}")
    print("| patch schedule | tokens | training step (s) | ratio | sampling 10 images (s) | ratio |")
    print("|---|---|---|---|---|---|")
    base_step, base_sample = statistics.median(step_s[0]), statistics.median(sample_s[0])
    for patch_nums, (seq_len, _, _), steps, samples in zip(schedules, built, step_s, sample_s):
        step, samp = statistics.median(steps), statistics.median(samples)
        print(f"| {','.join(map(str, patch_nums))} | {seq_len} | {step:.3f} | {step / base_step:.2f} | "
              f"{samp:.3f} | {samp / base_sample:.2f} |")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
