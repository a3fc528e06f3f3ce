"""The fast path on the device it is made for. On a CUDA machine these run the CUDA-graph capture and replay (which
the CPU suite cannot) and compare it bit for bit with the plain path; on CPU the same checks run against the eager
twin, so the test code itself is exercised in CI. `benchmarks/gpu_session.sh` runs this file before the benchmark."""

import pytest
import torch

from test_pipeline_var import make_pipeline

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KWARGS = dict(top_k=100, top_p=0.9, output_type="pt")  # top-k below the 300-code vocabulary: the sort-free filter works


def sample(pipe, device, fast, labels=(0, 3, 4), seed=0, **overrides):
    generator = torch.Generator(device).manual_seed(seed)
    return pipe(class_labels=list(labels), generator=generator, fast_path=fast, **{**KWARGS, **overrides})


def assert_same(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a.token_maps, b.token_maps))
    assert torch.equal(a.images, b.images)


def assert_captured(pipe, device):
    """On CUDA every scale was captured and replayed, not run by the eager fallback."""
    if device != "cuda":
        return
    for runner in pipe._runners.runners.values():
        assert runner.use_cuda_graphs and all(graph is not None for graph in runner.graphs)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("more_smooth", [False, True])
def test_fast_path_is_the_plain_path_bit_for_bit(device, dtype, more_smooth, caplog):
    """float32 and bf16 weights (bf16 logits tie: on CUDA the sort-free filter must break ties as CUDA's sort does);
    the second fast call replays the captured graphs and must give the same again."""
    pipe = make_pipeline(num_classes=5, vocab_size=300).to(device, dtype)
    with caplog.at_level("WARNING"):
        plain = sample(pipe, device, False, more_smooth=more_smooth)
        first = sample(pipe, device, True, more_smooth=more_smooth)
        replay = sample(pipe, device, True, more_smooth=more_smooth)
    assert "capture" not in caplog.text  # no fallback to eager
    assert_captured(pipe, device)
    assert_same(plain, first)
    assert_same(plain, replay)


def test_graphs_captured_under_autocast(device):
    """float32 weights under autocast (the reference demo's setting): graphs captured under autocast replay the same
    numbers in a later call (after the autocast context that captured them exited) and a call without autocast gets
    its own runner."""
    pipe = make_pipeline(num_classes=5, vocab_size=300).to(device)
    autocast_dtype = torch.float16 if device == "cuda" else torch.bfloat16
    with torch.autocast(device, dtype=autocast_dtype):
        plain = sample(pipe, device, False, more_smooth=True)
        first = sample(pipe, device, True, more_smooth=True)
    with torch.autocast(device, dtype=autocast_dtype):
        replay = sample(pipe, device, True, more_smooth=True)
    assert_same(plain, first)
    assert_same(plain, replay)
    full = sample(pipe, device, True, more_smooth=True)
    assert_same(full, sample(pipe, device, False, more_smooth=True))
    assert len(pipe._runners.runners) == 2
    assert_captured(pipe, device)


def test_chunks_and_batch_sizes_share_nothing_stale(device):
    """A whole batch and its chunks (two runners kept); per-image generators make the draws chunk-independent."""
    pipe = make_pipeline(num_classes=5, vocab_size=300).to(device)
    labels = [i % 5 for i in range(7)]
    generators = lambda: [torch.Generator(device).manual_seed(i) for i in range(7)]  # noqa: E731
    whole = pipe(class_labels=labels, generator=generators(), fast_path=True, **KWARGS)
    chunked = pipe(class_labels=labels, generator=generators(), fast_path=True, max_batch_size=3, **KWARGS)
    plain = pipe(class_labels=labels, generator=generators(), fast_path=False, **KWARGS)
    assert_same(whole, plain)
    # Chunks run other batch sizes, whose kernels may round differently: the same tokens, images within rounding.
    assert all(torch.equal(a, b) for a, b in zip(whole.token_maps, chunked.token_maps))
    torch.testing.assert_close(whole.images, chunked.images, atol=1e-5, rtol=0)
    assert_captured(pipe, device)


def test_weights_loaded_in_place_are_used_by_the_next_call(device):
    """Graphs hold pointers to the weights: new values loaded in place must show in the next fast call (the per-run
    constants are recomputed from them too)."""
    pipe = make_pipeline(num_classes=5, vocab_size=300).to(device)
    before = sample(pipe, device, True)
    other = make_pipeline(num_classes=5, vocab_size=300, seed=1).to(device)
    pipe.transformer.load_state_dict(other.transformer.state_dict())
    after = sample(pipe, device, True)
    assert not all(torch.equal(a, b) for a, b in zip(before.token_maps, after.token_maps))
    assert_same(after, sample(pipe, device, False))
