"""Activation memory of one VAR training step, measured on any device: the bytes autograd keeps for the backward
pass (parameters excluded), for the eager step, the torch.compile'd step and activation checkpointing.

    python benchmarks/activation_memory.py --model d16      # CPU: a few minutes for d16

Each variant is measured at two batch sizes: the slope is the memory per image (what grows with the batch), the
intercept what a step keeps whatever the batch (under bf16 autocast, the bf16 copies of the weights). Add float32
weights, gradients and AdamW moments (16 bytes per parameter) for a step's peak. The saved-tensor hooks see compiled
regions too, so the compiled figure is what the partitioner chose to keep.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from bench_var import configs, saved_activation_bytes
from var_hf import VARTransformer


def one_step(model, config, batch_size, device, dtype):
    g = torch.Generator().manual_seed(1)
    gt_BL = torch.randint(0, config.vocab_size, (batch_size, config.seq_len), generator=g).to(device)
    tf_input = torch.randn(batch_size, config.seq_len - config.first_len, config.vq_embed_dim, generator=g).to(device)
    labels_B = torch.randint(0, config.num_classes, (batch_size,), generator=g).to(device)

    def step():
        with torch.autocast(device.type, dtype=dtype):
            logits = model(labels_B, tf_input).logits
            loss = F.cross_entropy(logits.view(-1, config.vocab_size), gt_BL.view(-1))
        loss.backward()
        return loss

    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="d16", help="tiny, d16, d20, d24, d30")
    parser.add_argument("--batch-sizes", nargs=2, type=int, default=[1, 2], help="two batch sizes for the slope")
    parser.add_argument("--variants", nargs="+", default=["eager", "compile", "checkpointing"])
    parser.add_argument("--reference-batch", type=int, default=64, help="batch for the predicted peak column")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = configs(args.model)[1]
    b1, b2 = args.batch_sizes
    print(f"model={args.model} device={device} batches={b1},{b2} autocast=bf16 torch={torch.__version__} "
          f"date={time.strftime('%Y-%m-%d')}")
    print(f"| variant | MiB per image | vs eager | MiB per step | predicted peak GiB at B={args.reference_batch} |")
    print("|---|---|---|---|---|")
    eager_slope = None
    for variant in args.variants:
        torch.manual_seed(0)
        with torch.device(device):
            transformer = VARTransformer(config).train()
        num_params = sum(p.numel() for p in transformer.parameters())
        if variant == "checkpointing":
            transformer.activation_checkpointing_enable()
        model = torch.compile(transformer) if variant == "compile" else transformer
        measured = []
        for batch_size in (b1, b2):
            step = one_step(model, config, batch_size, device, torch.bfloat16)
            if variant == "compile":
                step()  # compile outside the measurement
            transformer.zero_grad(set_to_none=True)
            measured.append(saved_activation_bytes(step, transformer.parameters()))
            transformer.zero_grad(set_to_none=True)
        slope = (measured[1] - measured[0]) / (b2 - b1)
        intercept = measured[0] - b1 * slope
        eager_slope = eager_slope or slope
        peak = (16 * num_params + intercept + args.reference_batch * slope) / 2**30
        print(f"| {variant} | {slope / 2**20:.1f} | {slope / eager_slope:.2f} | {intercept / 2**20:.1f} | {peak:.1f} |",
              flush=True)
        transformer = model = step = None


if __name__ == "__main__":
    main()
