"""Time VAR sampling, decoding and a training step: a plain path and var_hf's path, in the same run.

    python benchmarks/bench_sampling.py                     # CPU: tiny configs, seconds
    python benchmarks/bench_sampling.py --models d16 d30    # GPU: real shapes, random weights

Plain path: an eager loop structured like the reference's `autoregressive_infer_cfg` (KV cache grown by concatenation
at every scale, the last scale's keys/values cached too), float32 weights, under bf16 autocast on CUDA as the
reference is usually run. var_hf path: `VARPipeline` (pre-allocated KV cache without the last scale), bf16 weights on
CUDA. Both draw the same tokens in float32 (checked here with `--check`). The table gives latency at B=1, images/s,
peak GPU memory, the ratio var_hf/plain and the fraction of the compute floor reached (transformer FLOPs with CFG,
at `--peak-tflops`).
"""

import argparse
import contextlib
import time

import torch

from var_hf import (
    MultiScaleVQVAE,
    MultiScaleVQVAEConfig,
    VARPipeline,
    VARScaleScheduler,
    VARTransformer,
    VARTransformerConfig,
)

TINY = dict(
    vqvae=dict(base_channels=32, channel_multipliers=(1, 1, 2), num_res_blocks=1, vocab_size=512, vq_embed_dim=16),
    var=dict(depth=4, embed_dim=128, num_heads=4, vocab_size=512, vq_embed_dim=16, num_classes=10),
    patch_nums=(1, 2, 3, 4, 6, 8),
)


def build(model: str, device, dtype):
    if model == "tiny":
        vq = MultiScaleVQVAEConfig(**TINY["vqvae"], patch_nums=TINY["patch_nums"])
        tr = VARTransformerConfig(**TINY["var"], patch_nums=TINY["patch_nums"])
    else:
        tr = VARTransformerConfig.from_named(f"var_{model}")
        vq = MultiScaleVQVAEConfig.from_named("vae_ch160v4096z32", patch_nums=tr.patch_nums)
    vqvae, transformer = MultiScaleVQVAE(vq).eval(), VARTransformer(tr).eval()
    pipe = VARPipeline(vqvae=vqvae, transformer=transformer, scheduler=VARScaleScheduler(patch_nums=list(tr.patch_nums)))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


@torch.no_grad()
def sample_plain(pipe: VARPipeline, labels, generator, guidance_scale=1.5, top_k=900, top_p=0.95):
    """Reference-structured eager sampler: concatenating KV cache, every scale cached."""
    tr, vq, sch = pipe.transformer, pipe.vqvae, pipe.scheduler
    B, patch_nums = len(labels), list(sch.config.patch_nums)
    C = vq.config.vq_embed_dim
    labels_B = torch.tensor(labels, device=tr.device)
    cond = tr.embed_class(torch.cat((labels_B, torch.full_like(labels_B, tr.config.null_class))))
    x = tr.embed_first_scale(cond)
    cache = tr.new_kv_cache(preallocate=False)
    f_hat = torch.zeros(B, C, patch_nums[-1], patch_nums[-1], device=tr.device)
    for si, pn in enumerate(patch_nums):
        logits = tr.forward_scale(x, cond, cache)
        logits = sch.apply_guidance(logits[:B], logits[B:], si, guidance_scale)
        tokens = sch.step(logits, si, generator=generator, top_k=top_k, top_p=top_p).token_map
        h = vq.embed_tokens(tokens).transpose(1, 2).reshape(B, C, pn, pn)
        f_hat, nxt = vq.next_scale_input(si, f_hat, h)
        if si != len(patch_nums) - 1:
            x = tr.embed_next_scale(si + 1, nxt.reshape(B, C, -1).transpose(1, 2)).repeat(2, 1, 1)
    return vq.decode(f_hat)


def transformer_flops_per_image(config: VARTransformerConfig) -> float:
    """Matmul FLOPs of one image with CFG (2 sequences): 2 * params-per-token * tokens + attention."""
    C, L, depth = config.embed_dim, config.seq_len, config.depth
    per_token = depth * (4 * C * C + 2 * C * round(C * config.mlp_ratio)) + C * config.vocab_size
    attn = 0
    seen = 0
    for pn in config.patch_nums:
        seen += pn * pn
        attn += 2 * 2 * pn * pn * seen * C * depth
    return 2 * (2 * per_token * L + attn)


def timed(fn, device, repeats):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="tiny, d16, d20, d24, d30 (default: tiny on CPU, d16 d30 on GPU)")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: 1 16 on CPU, 1 16 64 256 on GPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 matmul peak for the floor column")
    parser.add_argument("--check", action="store_true", help="check both paths draw the same tokens in float32")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = args.models or (["d16", "d30"] if device.type == "cuda" else ["tiny"])
    batch_sizes = args.batch_sizes or ([1, 16, 64, 256] if device.type == "cuda" else [1, 16])
    fast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"device={torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} torch={torch.__version__}")
    print("| model | B | plain ms | var_hf ms | plain img/s | var_hf img/s | ratio | plain GiB | var_hf GiB | floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in models:
        plain_pipe = build(model, device, torch.float32)
        fast_pipe = build(model, device, fast_dtype)
        fast_pipe.transformer.load_state_dict(plain_pipe.transformer.state_dict())
        fast_pipe.vqvae.load_state_dict(plain_pipe.vqvae.state_dict())
        if args.check:
            a = sample_plain(plain_pipe, [1, 2], torch.Generator(device).manual_seed(0))
            b = plain_pipe(class_labels=[1, 2], guidance_scale=1.5, generator=torch.Generator(device).manual_seed(0), output_type="pt").images
            print(f"check {model}: max |plain - var_hf| in float32 = {float((a.add(1).mul(0.5) - b).abs().max()):.2e}")
        num_classes = plain_pipe.transformer.config.num_classes
        floor_flops = transformer_flops_per_image(plain_pipe.transformer.config)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
        for B in batch_sizes:
            labels = [i % num_classes for i in range(B)]

            def plain():
                with autocast:
                    sample_plain(plain_pipe, labels, torch.Generator(device).manual_seed(0))

            def fast():
                fast_pipe(class_labels=labels, guidance_scale=1.5, generator=torch.Generator(device).manual_seed(0),
                          output_type="pt")

            try:
                t_plain, m_plain = timed(plain, device, args.repeats)
            except torch.OutOfMemoryError:
                t_plain, m_plain = float("inf"), float("nan")
            t_fast, m_fast = timed(fast, device, args.repeats)
            floor = floor_flops * B / t_fast / (args.peak_tflops * 1e12)
            print(f"| {model} | {B} | {t_plain * 1e3:.1f} | {t_fast * 1e3:.1f} | {B / t_plain:.1f} | {B / t_fast:.1f} | "
                  f"{t_plain / t_fast:.2f} | {m_plain:.1f} | {m_fast:.1f} | {floor:.3f} |")


if __name__ == "__main__":
    main()
