"""`var_hf.sampling_batching` on its own: batching, the out-of-memory retry from rewound generators, the sorting
re-draw and the up-front memory refusal. The batch function here is a plain random draw, so the checks are about the
policy, not the model (the pipeline-level checks are in test_fast_sampling.py)."""

import pytest
import torch

from var_hf.sampling_batching import (
    BatchSample,
    GeneratorRewind,
    check_call_fits_memory,
    draw_batch,
    output_bytes_per_image,
    rows_at_once,
    sample_in_batches,
)
from test_pipeline_var import gen, make_pipeline

BATCH = 5


def draw(rows, generator, sort_free=False, fail_above=None, exact=True, log=None):
    """A stand-in scale loop: one uniform draw per image (one generator for the batch, or one per image)."""
    n = rows.stop - rows.start
    if log is not None:
        log.append((n, sort_free))
    if fail_above is not None and n > fail_above:
        torch.rand(3, generator=generator if not isinstance(generator, list) else generator[0])  # used some stream
        raise torch.OutOfMemoryError("simulated")
    if isinstance(generator, list):
        values = torch.cat([torch.rand(1, 2, generator=g) for g in generator])
    else:
        values = torch.rand(n, 2, generator=generator)
    return BatchSample(f_hat=values, token_maps=[values.argmax(-1)], filter_exact=exact or not sort_free)


def test_batches_are_joined_in_order_and_per_image_generators_make_them_independent():
    whole = sample_in_batches(draw, BATCH, BATCH, [gen(i) for i in range(BATCH)], "cpu")
    for rows in (1, 2, 3):
        batched = sample_in_batches(draw, BATCH, rows, [gen(i) for i in range(BATCH)], "cpu")
        assert torch.equal(batched.f_hat, whole.f_hat) and torch.equal(batched.token_maps[0], whole.token_maps[0])
    one = sample_in_batches(draw, BATCH, 2, gen(0), "cpu")  # one generator: one stream through the batches
    assert torch.equal(one.f_hat, torch.rand(BATCH, 2, generator=gen(0)))


@pytest.mark.parametrize("per_image", [False, True])
def test_out_of_memory_halves_the_batch_from_rewound_generators(per_image):
    generators = (lambda: [gen(i) for i in range(BATCH)]) if per_image else (lambda: gen(7))
    freed, log = [], []
    retried = sample_in_batches(partial_draw(fail_above=2, log=log), BATCH, BATCH, generators(), "cpu",
                                retry_out_of_memory=True, on_out_of_memory=lambda: freed.append(1))
    expected = sample_in_batches(draw, BATCH, 2, generators(), "cpu")
    assert torch.equal(retried.f_hat, expected.f_hat)
    assert [n for n, _ in log] == [5, 2, 2, 1] and len(freed) == 1  # 5 fails; then batches of 2, 2, 1
    with pytest.raises(torch.OutOfMemoryError):
        sample_in_batches(partial_draw(fail_above=2), BATCH, BATCH, generators(), "cpu", retry_out_of_memory=False)


def test_the_default_generator_is_rewound_when_none_is_given():
    torch.manual_seed(3)
    retried = sample_in_batches(partial_draw(fail_above=1), 3, 3, None, "cpu", retry_out_of_memory=True)
    torch.manual_seed(3)
    assert torch.equal(retried.f_hat, sample_in_batches(draw, 3, 1, None, "cpu").f_hat)
    rewind = GeneratorRewind(None, "cpu")
    first = torch.rand(4)
    rewind()
    assert torch.equal(torch.rand(4), first)


def test_an_inexact_sort_free_batch_is_drawn_again_with_sorting_from_the_same_state():
    log = []
    sample = draw_batch(partial_draw(exact=False, log=log), slice(0, 3), gen(4), "cpu", sort_free=True)
    assert log == [(3, True), (3, False)]
    assert torch.equal(sample.f_hat, torch.rand(3, 2, generator=gen(4)))
    log.clear()
    draw_batch(partial_draw(log=log), slice(0, 3), gen(4), "cpu", sort_free=True)
    assert log == [(3, True)]


def test_a_call_whose_outputs_cannot_fit_is_refused_up_front():
    pipe = make_pipeline(num_classes=5)
    check_call_fits_memory(8, None, pipe.transformer, pipe.vqvae.config, "cpu")  # fits
    for device in ("cpu", "cuda"):  # the outputs end up on the host either way; no GPU is needed to decide
        with pytest.raises(ValueError, match="num_images_per_label"):
            check_call_fits_memory(10**12, 1, pipe.transformer, pipe.vqvae.config, device)
    small = output_bytes_per_image(16, 8, (1, 2, 3, 4))
    assert 0 < small < output_bytes_per_image(256, 32, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16))


def test_rows_at_once_off_cuda_is_the_batch_or_the_users_limit():
    pipe = make_pipeline(num_classes=5)
    assert rows_at_once(7, None, pipe.transformer, pipe.vqvae.config, "cpu") == 7
    assert rows_at_once(7, 3, pipe.transformer, pipe.vqvae.config, "cpu") == 3
    assert rows_at_once(2, 3, pipe.transformer, pipe.vqvae.config, "cpu") == 2


def partial_draw(**options):
    return lambda rows, generator, sort_free=False: draw(rows, generator, sort_free=sort_free, **options)
