"""Time VAR sampling, VQVAE decoding and one training step: a plain path and var_hf's fast path, in the same run.

    python benchmarks/bench_var.py                          # CPU: tiny configs, about a minute
    python benchmarks/bench_var.py --models d16 d20 d24 d30 # GPU: real shapes, random weights

Plain path (the baseline): an eager loop structured like the reference's `autoregressive_infer_cfg`: float32 weights
under bf16 autocast on CUDA, the KV cache grown by concatenation at every scale with the last scale cached too, the
vocabulary sorted for top-p, and the decoder run eagerly under autocast. Fast path: `VARPipeline(fast_path=True)`
with bf16 weights on CUDA (float32 on CPU): per-scale CUDA graphs on a pre-allocated cache without the last scale,
per-run constants, sort-free top-k/top-p on CUDA, and the opt-in channels-last VQVAE
(`vqvae.to(memory_format=torch.channels_last)`: decoding with cuDNN autotuning; rounds differently from the
reference's layout, so it is not the pipeline's default). Training step: eager under bf16 autocast (plain) vs
selective activation checkpointing and torch.compile (fast; compiled on CUDA by default).

`--compile-blocks` adds `VARTransformer.compile_blocks()` (torch.compile of the blocks' pointwise pieces) to the
fast path.

Printed: a table (latency, images/s, peak GiB, fast/plain speed ratio, fraction of the compute floor at
`--peak-tflops`, FLOPs counted by `torch.utils.flop_counter`), on CPU the operations one image launches on each path
(and how many the host would launch with one CUDA graph per scale), and the correctness of the fast path: in float32 the
fraction of tokens equal to the plain path's for the same seed (must be 1), and in bf16 the fraction equal to float32
sampling and the max logit error (teacher-forced on the float32 sample's tokens).
"""

import argparse
import contextlib
import time
from typing import Tuple

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from var_hf import (
    MultiScaleVQVAE,
    MultiScaleVQVAEConfig,
    VARPipeline,
    VARScaleScheduler,
    VARTransformer,
    VARTransformerConfig,
)
from var_hf.fast_sampling import StaticScaleRunner
from var_hf.file_utils import default_device

# Tiny widths, but the real 4096-code vocabulary: sampling cost (filtering, drawing) scales with it.
TINY = dict(
    vqvae=dict(base_channels=32, channel_multipliers=(1, 1, 2), num_res_blocks=1, vocab_size=4096, vq_embed_dim=16),
    var=dict(depth=4, embed_dim=128, num_heads=4, vocab_size=4096, vq_embed_dim=16, num_classes=10),
    patch_nums=(1, 2, 3, 4, 6, 8),
)
SAMPLING = dict(guidance_scale=1.5, top_k=900, top_p=0.95)


def configs(model: str):
    if model == "tiny":
        return (MultiScaleVQVAEConfig(**TINY["vqvae"], patch_nums=TINY["patch_nums"]),
                VARTransformerConfig(**TINY["var"], patch_nums=TINY["patch_nums"]))
    tr = VARTransformerConfig.from_named(f"var_{model}")
    return MultiScaleVQVAEConfig.from_named("vae_ch160v4096z32", patch_nums=tr.patch_nums), tr


def build(model: str, device, dtype, seed: int = 0) -> VARPipeline:
    """A pipeline of the named shapes with random weights (the same weights for the same seed and device)."""
    torch.manual_seed(seed)
    vq, tr = configs(model)
    with torch.device(device):  # initialise on the device: a d30 initialised on the CPU takes minutes
        vqvae, transformer = MultiScaleVQVAE(vq).eval(), VARTransformer(tr).eval()
    pipe = VARPipeline(vqvae=vqvae, transformer=transformer, scheduler=VARScaleScheduler(patch_nums=list(tr.patch_nums)))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def autocast_for(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


@torch.no_grad()
def sample_plain(pipe: VARPipeline, labels, generator, decode: bool = True):
    """Reference-structured eager sampler; returns (images in [-1, 1] or f_hat, token maps)."""
    tr, vq, sch = pipe.transformer, pipe.vqvae, pipe.scheduler
    B, patch_nums = len(labels), list(sch.config.patch_nums)
    C = vq.config.vq_embed_dim
    with autocast_for(tr.device):
        labels_B = torch.tensor(labels, device=tr.device)
        cond = tr.embed_class(torch.cat((labels_B, torch.full_like(labels_B, tr.config.null_class))))
        x = tr.embed_first_scale(cond)
        cache = tr.new_kv_cache(preallocate=False)
        f_hat = torch.zeros(B, C, patch_nums[-1], patch_nums[-1], device=tr.device)
        token_maps = []
        for si, pn in enumerate(patch_nums):
            logits = tr.forward_scale(x, cond, cache)
            logits = sch.apply_guidance(logits[:B], logits[B:], si, SAMPLING["guidance_scale"])
            tokens = sch.step(logits, si, generator=generator, top_k=SAMPLING["top_k"], top_p=SAMPLING["top_p"]).token_map
            token_maps.append(tokens)
            h = vq.embed_tokens(tokens).transpose(1, 2).reshape(B, C, pn, pn)
            f_hat, nxt = vq.next_scale_input(si, f_hat, h)
            if si != len(patch_nums) - 1:
                x = tr.embed_next_scale(si + 1, nxt.reshape(B, C, -1).transpose(1, 2)).repeat(2, 1, 1)
        return (vq.decode(f_hat) if decode else f_hat), token_maps


def sample_fast(pipe: VARPipeline, labels, generator, output_type="pt"):
    return pipe(class_labels=labels, generator=generator, output_type=output_type, fast_path=True, **SAMPLING)


class KernelOpCounter(TorchDispatchMode):
    """Counts the ATen operations that launch work (views and aliases excluded): on a GPU, roughly one kernel each."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func not in (torch.ops.aten.detach.default, torch.ops.aten.alias.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


def launches_per_image(plain_pipe: VARPipeline, fast_pipe: VARPipeline, label: int, device) -> Tuple[int, int, int]:
    """Operations one image (B=1, with guidance) dispatches: the plain path's, the fast path's, and how many the fast
    path's host still launches once each scale's transformer step is one CUDA graph (the step's operations replaced by
    one replay per scale). Counted eagerly, so it can be measured on CPU."""
    generator = torch.Generator(device).manual_seed(0)
    with KernelOpCounter() as plain_ops:
        sample_plain(plain_pipe, [label], generator)
    runner_steps = KernelOpCounter()
    original_step = StaticScaleRunner._step

    def counted_step(runner, scale_index):
        with runner_steps:
            return original_step(runner, scale_index)

    StaticScaleRunner._step = counted_step
    try:
        with KernelOpCounter() as fast_ops:
            sample_fast(fast_pipe, [label], torch.Generator(device).manual_seed(0))
    finally:
        StaticScaleRunner._step = original_step
    fast_pipe.release_fast_path()
    num_scales = len(fast_pipe.scheduler.config.patch_nums)
    return plain_ops.count, fast_ops.count, fast_ops.count - runner_steps.count + num_scales


def time_filters(device, repeats: int):
    """The top-k/top-p filter alone at the real vocabulary: 64 images x 256 tokens (the last 256px scale) x 4096
    logits, top-k 900, top-p 0.95; sorting (the reference's, the plain path's) vs sort-free (the fast path's on CUDA)."""
    logits_BlV = torch.randn(64, 256, 4096, generator=torch.Generator().manual_seed(0)).mul(2).to(device)
    sorting = timed(lambda: VARScaleScheduler.filter_logits(logits_BlV.clone(), 900, 0.95), device, repeats)[0]
    sort_free = timed(lambda: VARScaleScheduler.filter_logits_sort_free(logits_BlV.clone(), 900, 0.95), device, repeats)[0]
    print(f"filter alone (64 x 256 x 4096, top-k 900, top-p 0.95): sorting {1e3 * sorting:.1f} ms, sort-free "
          f"{1e3 * sort_free:.1f} ms, {sorting / sort_free:.2f}x")


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn, device, repeats: int):
    """(seconds per call, peak GiB on CUDA); one untimed warm-up call first (captures graphs, autotunes)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def timed_or_oom(fn, device, repeats):
    try:
        return timed(fn, device, repeats)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return float("inf"), float("nan")


def row(name, B, plain, fast, flops_per_image, peak_tflops):
    (t_plain, m_plain), (t_fast, m_fast) = plain, fast
    floor = flops_per_image * B / t_fast / (peak_tflops * 1e12) if flops_per_image else float("nan")
    print(f"| {name} | {B} | {t_plain * 1e3:.1f} | {t_fast * 1e3:.1f} | {B / t_plain:.1f} | {B / t_fast:.1f} | "
          f"{t_plain / t_fast:.2f} | {m_plain:.1f} | {m_fast:.1f} | {floor:.3f} |", flush=True)


def correctness(model: str, device, plain32: VARPipeline, labels, compile_blocks: bool = False):
    """Float32 fast vs plain tokens; bf16 fast vs bf16 plain tokens (bf16 logits tie: checks the sort-free filter's
    tie order on CUDA); bf16 fast vs float32 tokens and max logit error (with `compile_blocks`, of the compiled bf16
    model)."""
    _, plain_maps = sample_plain(plain32, labels, torch.Generator(device).manual_seed(0), decode=False)
    fast = sample_fast(plain32, labels, torch.Generator(device).manual_seed(0), output_type="latent")
    plain_tokens, fast_tokens = torch.cat(plain_maps, 1), torch.cat(fast.token_maps, 1)
    print(f"correctness {model} float32: fast tokens equal to plain: {(plain_tokens == fast_tokens).float().mean():.4f}")
    # The reference demo's setting: float32 weights under fp16 autocast (bf16 on CPU); graphs captured under autocast.
    autocast_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    with torch.autocast(device.type, dtype=autocast_dtype):
        runs = [plain32(class_labels=labels, generator=torch.Generator(device).manual_seed(0), output_type="pt",
                        fast_path=fast, **SAMPLING) for fast in (False, True)]
    same = all(torch.equal(a, b) for a, b in zip(runs[0].token_maps, runs[1].token_maps))
    print(f"correctness {model} float32 weights under {autocast_dtype} autocast: fast tokens equal to plain: {same}, "
          f"max image difference {(runs[0].images - runs[1].images).abs().max():.3g} (both must be exact)")
    plain32.release_fast_path()

    bf16 = build(model, device, torch.bfloat16)
    bf16.transformer.load_state_dict(plain32.transformer.state_dict())
    bf16.vqvae.load_state_dict(plain32.vqvae.state_dict())
    if compile_blocks:
        bf16.transformer.compile_blocks()
    fast16 = sample_fast(bf16, labels, torch.Generator(device).manual_seed(0), output_type="latent")
    tokens16 = torch.cat(fast16.token_maps, 1)
    plain16 = bf16(class_labels=labels, generator=torch.Generator(device).manual_seed(0), output_type="latent",
                   fast_path=False, **SAMPLING)
    print(f"correctness {model} bf16: fast tokens equal to the pipeline's plain path (ties included, must be 1): "
          f"{(torch.cat(plain16.token_maps, 1) == tokens16).float().mean():.4f}")
    first_scale_equal = (fast16.token_maps[0] == plain_maps[0]).float().mean()
    with torch.no_grad():
        labels_B = torch.tensor(labels, device=device)
        tf_input = plain32.vqvae.teacher_forcing_input(plain_maps)
        logits32 = plain32.transformer(labels_B, tf_input).logits
        logits16 = bf16.transformer(labels_B, tf_input.to(torch.bfloat16)).logits
    err = (logits16.float() - logits32).abs()
    print(f"correctness {model} bf16: tokens equal to float32 sampling: {(tokens16 == plain_tokens).float().mean():.4f} "
          f"(first scale {first_scale_equal:.4f}); max |logit error| {err.max():.4f}, mean {err.mean():.5f}, "
          f"logit std {logits32.std():.3f}")
    del bf16


def train_step_fn(transformer: VARTransformer, labels_B, tf_input, gt_BL, optimizer):
    def step():
        with autocast_for(labels_B.device):
            logits = transformer(labels_B, tf_input).logits
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), gt_BL.view(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def random_training_batch(config: VARTransformerConfig, batch_size: int, device):
    """Seeded random (class labels (B,), teacher-forcing input (B, L - first_len, C_vq), target tokens (B, L))."""
    g = torch.Generator().manual_seed(1)
    gt_BL = torch.randint(0, config.vocab_size, (batch_size, config.seq_len), generator=g).to(device)
    tf_input = torch.randn(batch_size, config.seq_len - config.first_len, config.vq_embed_dim, generator=g).to(device)
    labels_B = torch.randint(0, config.num_classes, (batch_size,), generator=g).to(device)
    return labels_B, tf_input, gt_BL


def bench_training(model, device, B, repeats, compile_fast: bool, peak_tflops):
    """One AdamW step on random tokens: eager (plain, the reference's structure) vs selective activation checkpointing
    plus torch.compile (fast; compiled when `compile_fast`); same weights, same loss. Activation memory per image on
    any device: benchmarks/activation_memory.py."""
    config = configs(model)[1]
    losses, results = [], []
    for fast in (False, True):
        torch.manual_seed(0)
        with torch.device(device):
            transformer = VARTransformer(config).train()
        if fast:
            transformer.enable_selective_checkpointing()
        optimizer = torch.optim.AdamW(transformer.parameters(), lr=1e-4, fused=device.type == "cuda")
        labels_B, tf_input, gt_BL = random_training_batch(config, B, device)
        module = torch.compile(transformer) if (fast and compile_fast) else transformer
        step = train_step_fn(module, labels_B, tf_input, gt_BL, optimizer)
        with torch.no_grad(), autocast_for(device):
            transformer.eval()
            logits = module(labels_B, tf_input).logits
            losses.append(float(F.cross_entropy(logits.float().view(-1, config.vocab_size), gt_BL.view(-1))))
            transformer.train()
        results.append(timed_or_oom(step, device, repeats))
        flops = flops_of(step) / B if not fast else None
        if flops is not None:
            flops_per_image = flops
        transformer = optimizer = module = step = None  # free the GPU before the next variant
    row(f"{model} train step", B, results[0], results[1], flops_per_image, peak_tflops)
    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="tiny, d16, d20, d24, d30 (default: tiny on CPU, d16 d20 d24 d30 on GPU)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: 1 16 on CPU, 1 16 64 256 on GPU")
    parser.add_argument("--decode-batch", type=int, default=None, help="default: 16 on CPU, 64 on GPU")
    parser.add_argument("--train-batch", type=int, default=None, help="default: 8 on CPU, 64 on GPU (0 skips)")
    parser.add_argument("--train-models", nargs="+", default=None,
                        help="models whose training step is timed (default: the first of --models; the issue's "
                             "training target is d16)")
    parser.add_argument("--train-compile", choices=["auto", "yes", "no"], default="auto",
                        help="torch.compile the fast training step (auto: on CUDA only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="dense bf16 peak for the floor column (default 790 on GPU, 1 on CPU)")
    parser.add_argument("--skip-correctness", action="store_true")
    parser.add_argument("--compile-blocks", action="store_true",
                        help="also torch.compile the fast path's pointwise block pieces (VARTransformer.compile_blocks)")
    args = parser.parse_args(argv)
    device = torch.device(default_device())
    on_gpu = device.type == "cuda"
    models = args.models or (["d16", "d20", "d24", "d30"] if on_gpu else ["tiny"])
    batch_sizes = args.batch_sizes or ([1, 16, 64, 256] if on_gpu else [1, 16])
    decode_batch = args.decode_batch or (64 if on_gpu else 16)
    train_batch = args.train_batch if args.train_batch is not None else (64 if on_gpu else 8)
    train_models = args.train_models or models[:1]
    peak = args.peak_tflops or (790.0 if on_gpu else 1.0)
    fast_dtype = torch.bfloat16 if on_gpu else torch.float32
    compile_train = args.train_compile == "yes" or (args.train_compile == "auto" and on_gpu)
    print(f"device={torch.cuda.get_device_name() if on_gpu else 'cpu'} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} fast dtype={fast_dtype} peak={peak} TFLOP/s "
          f"date={time.strftime('%Y-%m-%d')}")
    print("| model | B | plain ms | fast ms | plain img/s | fast img/s | fast/plain | plain GiB | fast GiB | floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    checks = []
    time_filters(device, args.repeats)
    for model in models:
        plain_pipe = build(model, device, torch.float32)
        fast_pipe = build(model, device, fast_dtype)
        fast_pipe.transformer.load_state_dict(plain_pipe.transformer.state_dict())
        fast_pipe.vqvae.load_state_dict(plain_pipe.vqvae.state_dict())
        fast_pipe.vqvae.to(memory_format=torch.channels_last)  # the opt-in fast decoding (not the reference's rounding)
        if args.compile_blocks:
            fast_pipe.transformer.compile_blocks()
        num_classes = plain_pipe.transformer.config.num_classes
        flops_per_image = flops_of(lambda: sample_plain(plain_pipe, [0], torch.Generator(device).manual_seed(0)))
        for B in batch_sizes:
            labels = [i % num_classes for i in range(B)]
            plain = timed_or_oom(lambda: sample_plain(plain_pipe, labels, torch.Generator(device).manual_seed(0)), device, args.repeats)
            fast = timed_or_oom(lambda: sample_fast(fast_pipe, labels, torch.Generator(device).manual_seed(0)), device, args.repeats)
            row(f"{model} sample", B, plain, fast, flops_per_image, peak)
            chunk = fast_pipe._chunk_size(B, None, True, device)
            if chunk < B:
                print(f"  (fast path ran B={B} in chunks of {chunk}: the memory estimate did not fit one pass)")
            fast_pipe.release_fast_path()

        if not on_gpu:  # a CPU count (on a GPU the timings above say it, and capture should not run under a counter)
            plain_ops, fast_ops, fast_launches = launches_per_image(plain_pipe, fast_pipe, 0, device)
            print(f"  ({model}, one image: {plain_ops} operations on the plain path, {fast_ops} on the fast path, of "
                  f"which the host launches {fast_launches} with one graph per scale: {plain_ops / fast_launches:.1f}x fewer)")

        f_hat = torch.randn(decode_batch, plain_pipe.vqvae.config.vq_embed_dim, *(2 * [plain_pipe.transformer.config.patch_nums[-1]]), device=device)
        decode_flops = flops_of(lambda: plain_pipe.vqvae.decode(f_hat[:1]))

        def decode_plain():
            with torch.no_grad(), autocast_for(device):
                plain_pipe.vqvae.decode(f_hat)

        def decode_fast():
            with torch.no_grad():
                fast_pipe.decode_latents(f_hat.to(fast_dtype))

        row(f"{model} decode", decode_batch, timed_or_oom(decode_plain, device, args.repeats),
            timed_or_oom(decode_fast, device, args.repeats), decode_flops, peak)
        if train_batch and model in train_models:
            checks.append((model, bench_training(model, device, train_batch, args.repeats, compile_train, peak)))
        if not args.skip_correctness:
            correctness(model, device, plain_pipe, labels=[i % num_classes for i in range(min(batch_sizes[-1], 16))],
                        compile_blocks=args.compile_blocks)
        plain_pipe = fast_pipe = None  # free the GPU before the next model
        if on_gpu:
            torch.cuda.empty_cache()
    for model, (loss_plain, loss_fast) in checks:
        print(f"training {model}: initial loss plain {loss_plain:.5f}, fast {loss_fast:.5f}")


if __name__ == "__main__":
    main()
