"""Activation memory of one VAR training step, measured on any device: what the forward pass leaves for the backward
pass (parameters excluded), for the eager step, the torch.compile'd step, selective and full activation checkpointing.

    python benchmarks/activation_memory.py --model d16      # CPU: about five minutes for d16

Counted at the end of the forward pass, when it peaks: the distinct tensors autograd saved (through saved-tensor hooks,
which see compiled regions too) plus the outputs selective checkpointing keeps in its own cache. Each variant is
measured at two batch sizes: the slope is the memory per image (what grows with the batch), the intercept what a step
keeps whatever the batch (under bf16 autocast, the bf16 copies of the weights). The predicted peak adds float32
weights, gradients and AdamW moments (16 bytes per parameter); transient buffers of single kernels are not counted.
"""

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import create_selective_checkpoint_contexts

from bench_var import configs, random_training_batch
from var_hf import VARTransformer
from var_hf.file_utils import default_device
from var_hf.modeling_var import _selective_checkpoint_policy


class ForwardMemory:
    """Collects what one forward pass keeps for backward: saved tensors and selective checkpointing's cache."""

    def __init__(self, parameters):
        self.weight_storages = {p.untyped_storage().data_ptr() for p in parameters}
        self.saved = {}
        self.caching_modes = []

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.weight_storages:
            self.saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    def selective_context(self):
        """The policy of `VARTransformer.enable_selective_checkpointing`, with its cache recorded."""
        caching, cached = create_selective_checkpoint_contexts(_selective_checkpoint_policy)
        self.caching_modes.append(caching)
        return caching, cached

    def total_bytes(self) -> int:
        for mode in self.caching_modes:
            for outputs in mode.storage.values():  # op -> {call index: output} (a list in older PyTorch)
                for output in outputs.values() if isinstance(outputs, dict) else outputs:
                    for tensor in output if isinstance(output, (tuple, list)) else (output,):
                        tensor = getattr(tensor, "val", tensor)  # PyTorch wraps cached outputs to detect mutation
                        if torch.is_tensor(tensor):
                            self.saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return sum(self.saved.values())


def build(model_name: str, variant: str, device, memory_factory):
    config = configs(model_name)[1]
    torch.manual_seed(0)
    with torch.device(device):
        transformer = VARTransformer(config).train()
    memory = memory_factory(transformer.parameters())
    if variant == "checkpointing":
        transformer.activation_checkpointing_enable()
    elif variant == "selective":
        transformer.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False, "context_fn": memory.selective_context}
        )
    elif variant == "compile+selective":  # compiled, the policy is applied by the compiler: its saves reach the hooks
        transformer.enable_selective_checkpointing()
    model = torch.compile(transformer) if variant.startswith("compile") else transformer
    return config, transformer, model, memory


def forward_memory(model_name: str, variant: str, batch_size: int, device) -> int:
    """Bytes one forward (with loss) leaves for backward; runs the backward afterwards to check the step works."""
    config, transformer, model, memory = build(model_name, variant, device, ForwardMemory)
    labels_B, tf_input, gt_BL = random_training_batch(config, batch_size, device)

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(labels_B, tf_input).logits
            return F.cross_entropy(logits.view(-1, config.vocab_size), gt_BL.view(-1))

    if variant.startswith("compile"):
        forward().backward()  # compile outside the measurement
        transformer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(memory.pack, lambda tensor: tensor):
        loss = forward()
    kept = memory.total_bytes()
    loss.backward()
    return kept


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="d16", help="tiny, d16, d20, d24, d30")
    parser.add_argument("--batch-sizes", nargs=2, type=int, default=[1, 2], help="two batch sizes for the slope")
    parser.add_argument("--variants", nargs="+",
                        default=["eager", "compile", "selective", "compile+selective", "checkpointing"])
    parser.add_argument("--reference-batch", type=int, default=64, help="batch for the predicted peak column")
    args = parser.parse_args(argv)
    device = torch.device(default_device())
    b1, b2 = args.batch_sizes
    num_params = sum(p.numel() for p in build(args.model, "eager", "meta", ForwardMemory)[1].parameters())
    print(f"model={args.model} ({num_params / 1e6:.0f}M parameters) device={device} batches={b1},{b2} autocast=bf16 "
          f"torch={torch.__version__} date={time.strftime('%Y-%m-%d')}")
    print(f"| variant | MiB per image | vs eager | MiB per step | predicted peak GiB at B={args.reference_batch} |")
    print("|---|---|---|---|---|")
    eager_slope = None
    for variant in args.variants:
        kept = [forward_memory(args.model, variant, b, device) for b in (b1, b2)]
        slope = (kept[1] - kept[0]) / (b2 - b1)
        intercept = kept[0] - b1 * slope
        eager_slope = eager_slope or slope
        peak = (16 * num_params + intercept + args.reference_batch * slope) / 2**30
        print(f"| {variant} | {slope / 2**20:.1f} | {slope / eager_slope:.2f} | {intercept / 2**20:.1f} | {peak:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
