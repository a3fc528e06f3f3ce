"""Time one training step of both stages on the CPU in float32 and under bf16 (and fp16) autocast, in the same run.

    python benchmarks/cpu_autocast.py                      # the default model's shapes, batch 32, 2 threads
    python benchmarks/cpu_autocast.py --precisions no bf16 --repeats 3 --threads 8

`accelerate launch --mixed_precision bf16` on a CPU runs the step under `torch.autocast("cpu", dtype=torch.bfloat16)`.
That is fast only where the CPU computes bf16 natively (AVX512-BF16 or AMX, which oneDNN reports); elsewhere (AVX2)
every bf16 matmul and convolution is emulated and the step is many times slower than float32. The training scripts
warn at start-up in that case; this script measures the factor.

Shapes: the bundled default model's tokenizer and transformer configs (fresh random weights: timing only), one AdamW
step on a batch of random images (tokenizer: reconstruction + quantizer loss) or random token maps (transformer:
cross-entropy). Printed: seconds per step, each precision's ratio against float32 measured in this run, and what the
CPU reports (capability, native bf16).
"""

import argparse
import contextlib

import torch
import torch.nn.functional as F

from bench_var import random_training_batch, timed
from var_hf import DEFAULT_MODEL, MultiScaleVQVAE, MultiScaleVQVAEConfig, VARTransformer, VARTransformerConfig
from var_hf.file_utils import cpu_computes_natively

AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str):
    dtype = AUTOCAST_DTYPES[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def vqvae_step(model: MultiScaleVQVAE, optimizer, pixel_values: torch.Tensor, precision: str):
    with autocast(precision):
        out = model(pixel_values)
        reconstruction = out.reconstruction.float()
        loss = F.l1_loss(reconstruction, pixel_values) + F.mse_loss(reconstruction, pixel_values) + out.vq_loss.float()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def var_step(model: VARTransformer, optimizer, batch, precision: str):
    labels_B, tf_input_BLC, gt_BL = batch
    with autocast(precision):
        logits_BLV = model(labels_B, tf_input_BLC).logits
        loss = F.cross_entropy(logits_BLV.float().view(-1, logits_BLV.shape[-1]), gt_BL.view(-1))
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precisions", nargs="+", choices=list(AUTOCAST_DTYPES), default=["no", "bf16", "fp16"],
                        help="'no' is float32 (the baseline, always measured first)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per precision, after one warm-up step")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", nargs="+", choices=["vqvae", "var"], default=["vqvae", "var"])
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.threads < 1:
        parser.error("--batch-size, --repeats and --threads must be at least 1")
    precisions = ["no"] + [p for p in args.precisions if p != "no"]
    torch.set_num_threads(args.threads)

    vqvae_config = MultiScaleVQVAEConfig.from_pretrained(DEFAULT_MODEL, subfolder="vqvae")
    var_config = VARTransformerConfig.from_pretrained(DEFAULT_MODEL, subfolder="transformer")
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"CPU capability {capability}, native bf16 {cpu_computes_natively('bf16')}, {args.threads} threads, "
          f"torch {torch.__version__}, batch {args.batch_size}, {args.repeats} timed steps after one warm-up")
    print(f"{'stage':<8} {'precision':<14} {'s/step':>8} {'vs float32':>11}")
    g = torch.Generator().manual_seed(0)
    for stage in args.stages:
        baseline = None
        for precision in precisions:
            torch.manual_seed(0)
            if stage == "vqvae":
                model = MultiScaleVQVAE(vqvae_config).train()
                side = vqvae_config.image_size
                pixel_values = torch.rand(args.batch_size, 3, side, side, generator=g) * 2 - 1
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
                step = lambda: vqvae_step(model, optimizer, pixel_values, precision)  # noqa: E731
            else:
                model = VARTransformer(var_config).train()
                batch = random_training_batch(var_config, args.batch_size, torch.device("cpu"))
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
                step = lambda: var_step(model, optimizer, batch, precision)  # noqa: E731
            seconds = timed(step, torch.device("cpu"), args.repeats)[0]  # one warm-up step, then the timed ones
            baseline = baseline or seconds
            name = "float32" if precision == "no" else f"{precision} autocast"
            print(f"{stage:<8} {name:<14} {seconds:>8.3f} {seconds / baseline:>10.2f}x", flush=True)


if __name__ == "__main__":
    main()
