"""The fast sampling path on CPU: static per-scale steps (the CUDA-graph code path without capture), sort-free
filtering, chunking by batch size, and the rule that picks the path. GPU timings live in benchmarks/bench_var.py."""

import pytest
import torch

from var_hf import VARKVCache, VARPipeline, VARScaleScheduler
from var_hf.fast_sampling import StaticScaleRunner, StaticScaleRunners, resolve_fast_path
from var_hf.sampling_batching import max_batch_for_memory, sampling_bytes_per_image
from test_pipeline_var import gen, make_pipeline

TOP_K = 10  # below the tiny vocabulary (32), so the sort-free filter does its own work instead of falling back


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline(num_classes=5)


def same_tokens(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_fast_path_is_opt_in_on_every_device(pipe):
    """Experimental until a recorded GPU run passes tests/test_cuda_graphs.py: off unless asked for, on any device."""
    assert resolve_fast_path(None) is False and resolve_fast_path(False) is False
    assert resolve_fast_path(True) is True
    with pytest.raises(ValueError, match="fast_path must be True or False"):
        resolve_fast_path("yes")
    pipe.release_fast_path()
    pipe(class_labels=[0], generator=gen(0), top_k=TOP_K, output_type="latent")  # the default: the plain loop
    assert not pipe._runners.runners
    pipe(class_labels=[0], generator=gen(0), top_k=TOP_K, output_type="latent", fast_path=True)
    assert pipe._runners.runners


@pytest.mark.parametrize("top_k,top_p", [(10, 0.95), (3, 0.5), (25, 0.99), (10, 0.0), (0, 0.8), (31, 0.9), (64, 0.9)])
def test_sort_free_filter_matches_sorting_filter(top_k, top_p):
    logits_BlV = torch.randn(4, 50, 32, generator=gen(top_k)) * 3
    expected = VARScaleScheduler.filter_logits(logits_BlV.clone(), top_k=top_k, top_p=top_p)
    got = VARScaleScheduler.filter_logits_sort_free(logits_BlV.clone(), top_k=top_k, top_p=top_p)
    assert torch.equal(expected, got)
    kept = torch.isfinite(got).sum(-1)
    assert int(kept.min()) >= 1 and (top_k == 0 or top_k > 32 or int(kept.max()) <= top_k)


def test_sort_free_filtering_is_chosen_where_the_device_sort_is_stable():
    """Sort-free filtering breaks ties like a stable sort, so it is used only where the reference's sort is one: CUDA
    rows of more than 128 entries (radix sort), not the CPU sort nor CUDA's bitonic/warp sorts of short rows."""
    from var_hf.fast_sampling import sort_free_filter_matches_reference

    cuda = torch.device("cuda")  # only the device type is read; no GPU is needed
    assert sort_free_filter_matches_reference(cuda, 4096) and sort_free_filter_matches_reference(cuda, 129)
    assert not sort_free_filter_matches_reference(cuda, 128) and not sort_free_filter_matches_reference(cuda, 32)
    assert not sort_free_filter_matches_reference(torch.device("cpu"), 4096)


def test_sort_free_filter_at_vocabulary_scale():
    logits_BlV = torch.randn(2, 64, 4096, generator=gen(1)) * 2
    expected = VARScaleScheduler.filter_logits(logits_BlV.clone(), top_k=900, top_p=0.95)
    assert torch.equal(VARScaleScheduler.filter_logits_sort_free(logits_BlV.clone(), top_k=900, top_p=0.95), expected)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(guidance_scale=0.0),
    dict(more_smooth=True),
    dict(temperature=0.7, top_p=0.6),
    dict(class_labels=[None, 2, 2]),
])
def test_fast_path_draws_the_plain_paths_tokens(pipe, kwargs):
    kwargs = {"class_labels": [0, 3, 4], "top_k": TOP_K, "top_p": 0.9, **kwargs}
    plain = pipe(generator=gen(5), output_type="pt", fast_path=False, **kwargs)
    fast = pipe(generator=gen(5), output_type="pt", fast_path=True, **kwargs)
    assert same_tokens(plain.token_maps, fast.token_maps)
    assert torch.equal(fast.images, plain.images)  # same tokens, same decoder: the same bits


def test_fast_path_editing_matches_plain(pipe):
    image = torch.rand(3, 16, 16)
    kwargs = dict(class_labels=[1, 2], image=image, mask_image=(0.25, 0.25, 0.75, 0.75), top_k=TOP_K, output_type="pt")
    plain = pipe(generator=gen(2), fast_path=False, **kwargs)
    fast = pipe(generator=gen(2), fast_path=True, **kwargs)
    assert same_tokens(plain.token_maps, fast.token_maps)


def test_static_runners_are_reused_and_rewritten_not_appended(pipe):
    """Repeated and interleaved batch sizes reuse runners; each run must rewrite the cache, not read stale scales."""
    pipe.release_fast_path()
    first = pipe(class_labels=[0, 1], generator=gen(7), top_k=TOP_K, output_type="latent", fast_path=True)
    runner = next(iter(pipe._runners.runners.values()))
    pipe(class_labels=[4, 4, 4], generator=gen(8), top_k=TOP_K, output_type="latent", fast_path=True)
    again = pipe(class_labels=[0, 1], generator=gen(7), top_k=TOP_K, output_type="latent", fast_path=True)
    assert runner in pipe._runners.runners.values()  # the batch-2 runner survived the batch-3 call
    assert same_tokens(first.token_maps, again.token_maps)
    plain = pipe(class_labels=[0, 1], generator=gen(7), top_k=TOP_K, output_type="latent", fast_path=False)
    assert same_tokens(plain.token_maps, again.token_maps)
    torch.testing.assert_close(again.images, plain.images)


def test_runner_pool_is_bounded(pipe):
    runners = StaticScaleRunners(max_runners=2)
    for rows in (2, 4, 6):
        runners.get(pipe.transformer, rows, use_cuda_graphs=False)
    assert sorted(key[1] for key in runners.runners) == [4, 6]
    assert runners.holds(6) and runners.holds(4) and not runners.holds(2)


def test_chunked_sampling_with_per_image_generators_is_chunk_independent(pipe):
    labels = [0, 1, 2, 3, 4, 0, 1]
    whole = pipe(class_labels=labels, generator=[gen(i) for i in range(7)], top_k=TOP_K, output_type="pt")
    for fast in (False, True):
        chunked = pipe(class_labels=labels, generator=[gen(i) for i in range(7)], top_k=TOP_K, output_type="pt",
                       max_batch_size=3, fast_path=fast)
        assert same_tokens(whole.token_maps, chunked.token_maps)
        torch.testing.assert_close(chunked.images, whole.images, atol=1e-5, rtol=0)


def test_chunked_sampling_with_one_generator_still_returns_every_image(pipe):
    out = pipe(class_labels=[0, 1, 2, 3, 4], generator=gen(0), max_batch_size=2, output_type="pt")
    assert out.images.shape[0] == 5 and all(t.shape[0] == 5 for t in out.token_maps)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "4"])
def test_bad_max_batch_size_is_rejected_before_sampling(pipe, bad):
    with pytest.raises(ValueError, match="max_batch_size must be an int >= 1"):
        pipe(class_labels=[0], max_batch_size=bad)


def test_cuda_graphs_need_a_cuda_model(pipe):
    with pytest.raises(ValueError, match="CUDA graphs need the transformer on a CUDA device"):
        StaticScaleRunner(pipe.transformer, batch_size=2, use_cuda_graphs=True)


def test_kv_cache_allocate_and_seek_guard_their_preconditions():
    with pytest.raises(ValueError, match="pre-allocated"):
        VARKVCache(2).allocate(1, 2, 4, torch.float32, "cpu")
    cache = VARKVCache(2, max_len=5).allocate(1, 2, 4, torch.float32, "cpu")
    assert cache.keys[0].shape == (1, 2, 5, 4)
    cache.seek(3)
    assert cache.get_seq_length(1) == 3
    with pytest.raises(ValueError, match="seek"):
        cache.seek(6)


def test_memory_estimate_grows_with_model_and_is_unlimited_on_cpu(pipe):
    small = sampling_bytes_per_image(pipe.transformer, pipe.vqvae.config)
    bigger = make_pipeline(num_classes=5)
    bigger.transformer.config.depth = 2 * pipe.transformer.config.depth
    assert small > 0 and sampling_bytes_per_image(bigger.transformer, bigger.vqvae.config) > small
    assert max_batch_for_memory(pipe.transformer, pipe.vqvae.config, torch.device("cpu")) is None


def test_generate_command_fast_path_switch_gives_the_same_images(pipe, tmp_path):
    import numpy as np
    import PIL.Image

    from var_hf.commands.var_hf_cli import main as cli_main

    pipe.save_pretrained(tmp_path / "model")
    outputs = {}
    for mode, extra in (("on", []), ("off", []), ("channels_last", ["--channels-last"])):
        rc = cli_main(["generate", "--model", str(tmp_path / "model"), "--label", "1", "--label", "3", "--top-k", str(TOP_K),
                       "--fast-path", "off" if mode == "off" else "on", "--out", str(tmp_path / mode), *extra])
        assert rc == 0
        outputs[mode] = [np.asarray(PIL.Image.open(tmp_path / mode / name)) for name in sorted((tmp_path / mode).iterdir())]
    assert len(outputs["on"]) == 3  # two samples and the grid
    assert all(np.array_equal(a, b) for a, b in zip(outputs["on"], outputs["off"]))
    # Channels-last decoding: same tokens; pixels may differ by one 8-bit level where the layout changes the rounding.
    diffs = [np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(outputs["channels_last"], outputs["off"])]
    assert max(diffs) <= 1


def test_a_failed_graph_capture_falls_back_to_the_same_eager_numbers(pipe, monkeypatch, caplog):
    """Capture can fail on a GPU (unsupported kernel, driver limit); the runner must warn and give the eager logits.
    Only the capture call is replaced here (it needs CUDA); the runner's own fallback logic runs for real."""
    transformer = pipe.transformer
    cond = transformer.embed_class(torch.tensor([1, 2, 5, 5]))
    x = transformer.embed_first_scale(cond)
    eager = StaticScaleRunner(transformer, batch_size=4, use_cuda_graphs=False)
    eager.set_condition(cond)
    with torch.no_grad():
        expected = eager.run(0, x).clone()
    runner = StaticScaleRunner(transformer, batch_size=4, use_cuda_graphs=False)
    runner.use_cuda_graphs = True

    def failing_capture(scale_index):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(runner, "_capture", failing_capture)
    runner.set_condition(cond)
    with torch.no_grad(), caplog.at_level("WARNING"):
        got = runner.run(0, x)
    assert torch.equal(got, expected)
    assert runner.use_cuda_graphs is False and "continuing without graphs" in caplog.text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sync_free_draw_is_torch_multinomial(dtype):
    """Same indices and the same generator state afterwards, so later draws (smoothing, the next scale) line up."""
    logits_NV = torch.randn(300, 4096, generator=gen(0)) * 3
    logits_NV[:, ::3] = -torch.inf  # filtered entries
    probs_NV = logits_NV.softmax(-1).to(dtype)
    g_ref, g_fast = gen(11), gen(11)
    expected = torch.multinomial(probs_NV, 1, replacement=True, generator=g_ref)
    got = VARScaleScheduler.draw_sync_free(probs_NV, generator=g_fast)
    assert torch.equal(got, expected)
    assert torch.equal(g_ref.get_state(), g_fast.get_state())


@pytest.mark.parametrize("per_image_generators", [False, True])
def test_sync_free_step_matches_the_multinomial_step(per_image_generators):
    scheduler = VARScaleScheduler(patch_nums=[1, 2, 3])
    logits = torch.randn(3, 9, 64, generator=gen(1))
    codebook = torch.randn(64, 8, generator=gen(2))

    def generators():
        return [gen(i) for i in range(3)] if per_image_generators else gen(5)

    kwargs = dict(scale_index=2, top_k=20, top_p=0.9, more_smooth=True, codebook=codebook)
    plain = scheduler.step(logits, generator=generators(), **kwargs)
    fast = scheduler.step(logits, generator=generators(), sort_free=True, sync_free=True, **kwargs)
    assert torch.equal(plain.token_map, fast.token_map)
    assert torch.equal(plain.smoothed_embeddings, fast.smoothed_embeddings)
    assert plain.probabilities_valid is None and bool(fast.probabilities_valid)


def test_nan_logits_fail_on_both_paths(pipe):
    broken = make_pipeline(num_classes=5)
    with torch.no_grad():
        broken.transformer.head.bias[3] = float("nan")
    with pytest.raises(RuntimeError, match="probability tensor contains"):
        broken(class_labels=[0], generator=gen(0), fast_path=False)
    with pytest.raises(RuntimeError, match="inf or NaN probabilities"):
        broken(class_labels=[0], generator=gen(0), fast_path=True)


def test_fast_path_with_compiled_blocks(pipe):
    """compile_blocks combines with the fast path (traced with backend="eager", so the tokens must not move)."""
    torch._dynamo.reset()
    kwargs = dict(class_labels=[0, 3], top_k=TOP_K, output_type="latent")
    plain = pipe(generator=gen(4), fast_path=False, **kwargs)
    pipe.transformer.compile_blocks(backend="eager", fullgraph=True)
    try:
        fast = pipe(generator=gen(4), fast_path=True, **kwargs)
    finally:
        pipe.transformer.compile_blocks(False)
    assert same_tokens(plain.token_maps, fast.token_maps)


def test_moving_the_pipeline_drops_the_runners(pipe):
    pipe(class_labels=[0], generator=gen(0), top_k=TOP_K, output_type="latent", fast_path=True)
    assert pipe._runners.runners
    assert pipe.to("cpu") is pipe and not pipe._runners.runners


@pytest.mark.parametrize("fast", [False, True])
def test_out_of_memory_halves_the_chunk_and_rewinds_the_generator(pipe, fast, caplog):
    """A chunk that runs out of memory is retried at half the size from rewound generators: the result is exactly
    what that chunk size gives from the start. (The out-of-memory error comes from a callback here, as it would come
    from any allocation on a GPU.)"""

    def fail_on_large_chunks(pipeline, step, timestep, tensors):
        if tensors["f_hat"].shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return {}

    kwargs = dict(class_labels=[0, 1, 2, 3, 4], top_k=TOP_K, output_type="pt", fast_path=fast,
                  callback_on_step_end_tensor_inputs=["f_hat"])
    with caplog.at_level("WARNING"):
        retried = pipe(generator=gen(9), callback_on_step_end=fail_on_large_chunks, **kwargs)
    assert "retrying with 2" in caplog.text
    expected = pipe(generator=gen(9), max_batch_size=2, **kwargs)
    assert same_tokens(retried.token_maps, expected.token_maps)
    torch.testing.assert_close(retried.images, expected.images, rtol=0, atol=0)
    with pytest.raises(torch.OutOfMemoryError):  # an explicit max_batch_size is the user's word: no retry
        pipe(generator=gen(9), callback_on_step_end=fail_on_large_chunks, max_batch_size=4, **kwargs)
    # Without a generator the draws come from the global one, which is rewound the same way.
    torch.manual_seed(3)
    retried = pipe(generator=None, callback_on_step_end=fail_on_large_chunks, **kwargs)
    torch.manual_seed(3)
    expected = pipe(generator=None, max_batch_size=2, **kwargs)
    assert same_tokens(retried.token_maps, expected.token_maps)


def test_decoding_in_sub_batches_matches_one_decode(pipe):
    from var_hf.sampling_batching import DECODE_BATCH_SIZE

    labels = [i % 5 for i in range(DECODE_BATCH_SIZE + 3)]
    decoder_calls = []
    handle = pipe.vqvae.decoder.register_forward_hook(lambda module, args, out: decoder_calls.append(len(out)))
    try:
        out = pipe(class_labels=labels, generator=gen(1), top_k=TOP_K, output_type="pt")
        pipe.decode_batch_size = None  # the reference's single decode
        at_once = pipe(class_labels=labels, generator=gen(1), top_k=TOP_K, output_type="pt")
    finally:
        handle.remove()
        pipe.decode_batch_size = DECODE_BATCH_SIZE
    assert decoder_calls == [DECODE_BATCH_SIZE, 3, DECODE_BATCH_SIZE + 3]
    with torch.no_grad():
        whole = pipe.vqvae.decode_tokens(out.token_maps).add(1).mul(0.5)
    torch.testing.assert_close(out.images, whole, atol=1e-5, rtol=0)
    torch.testing.assert_close(at_once.images, whole, atol=1e-5, rtol=0)


def test_out_of_memory_during_capture_is_not_a_capture_failure(pipe, monkeypatch):
    runner = StaticScaleRunner(pipe.transformer, batch_size=2, use_cuda_graphs=False)
    runner.use_cuda_graphs = True

    def out_of_memory(scale_index):
        raise torch.OutOfMemoryError("simulated: CUDA out of memory")

    monkeypatch.setattr(runner, "_capture", out_of_memory)
    cond = pipe.transformer.embed_class(torch.tensor([1, 5]))
    runner.set_condition(cond)
    with torch.no_grad(), pytest.raises(torch.OutOfMemoryError):
        runner.run(0, pipe.transformer.embed_first_scale(cond))
    assert runner.use_cuda_graphs  # left to the pipeline's smaller-batch retry


def test_fast_path_under_autocast_matches_plain_and_keeps_its_own_runner(pipe):
    """Under the caller's autocast (how the reference's demo samples) the fast path computes exactly what the plain
    path does. Its runner is keyed by the autocast state: a CUDA graph replays the casts of its capture."""
    pipe.release_fast_path()
    kwargs = dict(class_labels=[0, 3, 4], top_k=TOP_K, top_p=0.9, more_smooth=True, output_type="pt")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = pipe(generator=gen(5), fast_path=False, **kwargs)
        fast = pipe(generator=gen(5), fast_path=True, **kwargs)
    assert same_tokens(plain.token_maps, fast.token_maps)
    assert torch.equal(fast.images, plain.images)
    full_precision = pipe(generator=gen(5), fast_path=True, **kwargs)
    assert not torch.equal(full_precision.images, fast.images)  # autocast did change the numbers
    assert sorted(runner.autocast for runner in pipe._runners.runners.values()) == [(False, None), (True, torch.bfloat16)]


def test_channels_last_decoding_is_the_users_opt_in(pipe):
    """By default decoding keeps the reference's layout (bit-identical images on both paths); a channels-last VQVAE
    (`vqvae.to(memory_format=torch.channels_last)`) decodes channels-last, within rounding of the default."""
    from var_hf.fast_sampling import is_channels_last

    kwargs = dict(class_labels=[1, 2], top_k=TOP_K, output_type="pt")
    default = pipe(generator=gen(4), **kwargs)
    assert not is_channels_last(pipe.vqvae)
    try:
        pipe.vqvae.to(memory_format=torch.channels_last)
        assert is_channels_last(pipe.vqvae)
        channels_last = pipe(generator=gen(4), **kwargs)
    finally:
        pipe.vqvae.to(memory_format=torch.contiguous_format)
    assert same_tokens(default.token_maps, channels_last.token_maps)
    torch.testing.assert_close(channels_last.images, default.images, atol=1e-5, rtol=0)


def test_images_reach_unit_range_in_the_decoders_dtype(pipe):
    """As the reference's `fhat_to_img(f_hat).add_(1).mul_(0.5)`: under autocast [-1, 1] -> [0, 1] happens in bf16,
    before the cast to float32, so `output_type="pt"` carries the reference's values."""
    kwargs = dict(class_labels=[1, 2], top_k=TOP_K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = pipe(generator=gen(3), output_type="pt", **kwargs).images
        f_hat = pipe(generator=gen(3), output_type="latent", **kwargs).images
        with torch.no_grad():
            decoded = pipe.vqvae.decode(f_hat)
    assert decoded.dtype == torch.bfloat16
    assert torch.equal(images, decoded.add(1).mul(0.5).float())
    assert not torch.equal(images, decoded.float().add(1).mul(0.5))  # the order is visible, so the check can fail


def stable_sorting_filter(logits_BlV, top_k, top_p):
    """The reference's filter with a stable sort (the order PyTorch's CUDA sort gives rows of more than 128)."""
    kth = logits_BlV.topk(top_k, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)
    logits_BlV = logits_BlV.masked_fill(logits_BlV < kth, -torch.inf)
    sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False, stable=True)
    remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove[..., -1:] = False
    return logits_BlV.masked_fill(remove.scatter(-1, sorted_idx, remove), -torch.inf)


@pytest.mark.parametrize("spread", [1.0, 3.0, 10.0])
@pytest.mark.parametrize("top_k,top_p", [(900, 0.95), (50, 0.5), (300, 0.8)])
def test_sort_free_filter_breaks_bf16_ties_like_a_stable_sort(spread, top_k, top_p):
    """bf16 logits tie often, at the k-th value and at the top-p cut; the sort-free filter must keep exactly what a
    stable sort keeps, and say it was exact."""
    logits_BlV = (torch.randn(4, 64, 4096, generator=gen(int(spread))) * spread).bfloat16().float()
    at_cut = (logits_BlV.topk(top_k, dim=-1).values[..., -1:] == logits_BlV).sum(-1)
    assert int(at_cut.max()) > 1  # ties at the k-th value are present, so the comparison below covers them
    expected = stable_sorting_filter(logits_BlV.clone(), top_k, top_p)
    got, exact = VARScaleScheduler.filter_logits_sort_free(logits_BlV.clone(), top_k, top_p, return_exact=True)
    assert bool(exact) and torch.equal(got, expected)


def test_sort_free_filter_reports_ties_beyond_its_short_list():
    tied_BlV = torch.zeros(1, 2, 4096)
    tied_BlV[0, 1] = torch.randn(4096, generator=gen(0))  # one degenerate row, one ordinary
    _, exact = VARScaleScheduler.filter_logits_sort_free(tied_BlV.clone(), 900, 0.95, return_exact=True)
    assert not bool(exact)
    _, exact = VARScaleScheduler.filter_logits_sort_free(tied_BlV[:, 1:].clone(), 900, 0.95, return_exact=True)
    assert bool(exact)


def test_fast_path_resamples_with_sorting_when_the_sort_free_filter_cannot_be_exact(monkeypatch, caplog):
    """Sort-free filtering runs on CUDA only (where the reference's sort is stable); forced on here. A head with zero
    weights gives every code the same logit, more ties than the short list holds: the chunk is drawn again with
    sorting, from the same generator state, so the tokens are the plain path's."""
    import sys

    pipeline_module = sys.modules[VARPipeline.__module__]

    degenerate = make_pipeline(num_classes=5, vocab_size=300)
    with torch.no_grad():
        degenerate.transformer.head.weight.zero_()
        degenerate.transformer.head.bias.zero_()
    kwargs = dict(class_labels=[0, 3], top_k=100, top_p=0.9, output_type="pt")
    plain = degenerate(generator=gen(6), fast_path=False, **kwargs)
    monkeypatch.setattr(pipeline_module, "sort_free_filter_matches_reference", lambda device, vocab_size: True)
    with caplog.at_level("INFO"):
        fast = degenerate(generator=gen(6), fast_path=True, **kwargs)
    assert "re-sampling the chunk with sorting" in caplog.text
    assert same_tokens(plain.token_maps, fast.token_maps) and torch.equal(plain.images, fast.images)
    torch.manual_seed(4)  # the global generator is rewound too
    plain = degenerate(generator=None, fast_path=False, **kwargs)
    torch.manual_seed(4)
    assert same_tokens(plain.token_maps, degenerate(generator=None, fast_path=True, **kwargs).token_maps)

    caplog.clear()
    ordinary = make_pipeline(num_classes=5, vocab_size=300)
    with caplog.at_level("INFO"):
        fast = ordinary(generator=gen(6), fast_path=True, **kwargs)
    assert "re-sampling" not in caplog.text
    assert same_tokens(ordinary(generator=gen(6), fast_path=False, **kwargs).token_maps, fast.token_maps)


@pytest.mark.parametrize("fast", [False, True])
def test_per_run_constants_are_computed_once_per_run(pipe, fast):
    """AdaLN vectors (and the attentions' biases and query scales) do not change across scales; the AdaLN projection
    is a third of the weights, so both paths compute them once per batch instead of once per scale. A runner refills
    its buffers in place (its graphs point at them) and a new class condition gives the plain path's tokens."""
    calls = []
    handles = [block.adaln.register_forward_hook(lambda *args: calls.append(1)) for block in pipe.transformer.blocks]
    try:
        pipe(class_labels=[0, 1], generator=gen(2), top_k=TOP_K, output_type="latent", fast_path=fast)
    finally:
        for handle in handles:
            handle.remove()
    assert len(calls) == len(pipe.transformer.blocks)  # once per block, not once per block and scale
    if fast:
        runner = next(r for r in pipe._runners.runners.values() if r.batch_size == 4)
        pointers = [m.data_ptr() for m in runner.constants.tensors()]
        fast_out = pipe(class_labels=[3, 4], generator=gen(3), top_k=TOP_K, output_type="latent", fast_path=True)
        assert [m.data_ptr() for m in runner.constants.tensors()] == pointers
        plain_out = pipe(class_labels=[3, 4], generator=gen(3), top_k=TOP_K, output_type="latent", fast_path=False)
        assert same_tokens(fast_out.token_maps, plain_out.token_maps)


def test_all_scales_share_one_logits_buffer():
    """Graph outputs must stay put until read; one buffer sized for the last scale serves every scale, so the graph
    pool does not keep every scale's logits (2.7 times the last scale's at 256px). Its copy is the float32 upcast."""
    transformer = make_pipeline(num_classes=5).transformer.to(torch.bfloat16)
    runner = StaticScaleRunner(transformer, batch_size=2, use_cuda_graphs=False)
    cond = transformer.embed_class(torch.tensor([1, 5]))
    runner.set_condition(cond)
    cache = transformer.new_kv_cache()
    x_2BlC = transformer.embed_first_scale(cond)
    with torch.no_grad():
        for si, pn in enumerate(transformer.config.patch_nums):
            logits = runner.run(si, x_2BlC)
            expected = transformer.forward_scale(x_2BlC, cond, cache)
            assert logits.dtype == torch.float32 and logits.data_ptr() == runner.logits_buffer.data_ptr()
            assert torch.equal(logits, expected)
            if si + 1 < len(transformer.config.patch_nums):
                nxt = transformer.config.patch_nums[si + 1]
                x_2BlC = torch.randn(2, nxt * nxt, transformer.config.embed_dim, generator=gen(si)).bfloat16()
