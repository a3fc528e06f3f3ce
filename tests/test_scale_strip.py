"""Scale strips: per-scale image estimates recorded through `callback_on_step_end`, and the strip layout."""

import numpy as np
import PIL.Image
import pytest
import torch

from var_hf.scale_strip import ScaleStripRecorder, make_scale_strip, scale_labels, tensor_to_pil

from conftest import TINY_PATCH_NUMS, perturb_


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    # Perturbed weights: with the near-zero initial gains every scale would sample almost the same codes.
    perturb_(tiny_pipeline.transformer, std=0.2, seed=1)
    return tiny_pipeline


def sample(pipe, recorder, tensor_inputs=None, **kwargs):
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return pipe(
        class_labels=[0, 3, None], guidance_scale=1.5, callback_on_step_end=recorder,
        callback_on_step_end_tensor_inputs=list(tensor_inputs or recorder.tensor_inputs), fast_path=False, **kwargs,
    )


def test_recorder_keeps_one_estimate_per_scale_and_the_last_is_the_output(pipe):
    recorder = ScaleStripRecorder()
    out = sample(pipe, recorder, output_type="pt")
    estimates = recorder.estimates()
    assert recorder.num_scales == len(TINY_PATCH_NUMS) == len(estimates)
    assert all(e.shape == out.images.shape for e in estimates)
    torch.testing.assert_close(estimates[-1], out.images.float(), rtol=0, atol=0)
    # Coarse to fine: the 1x1 estimate is not yet the image.
    assert not torch.equal(estimates[0], estimates[-1])

    recorder_pil = ScaleStripRecorder()
    out_pil = sample(pipe, recorder_pil)  # same seed, output_type="pil"
    per_image = recorder_pil.images_per_image()
    assert len(per_image) == 3 and all(len(images) == len(TINY_PATCH_NUMS) for images in per_image)
    for images, final in zip(per_image, out_pil.images):
        assert np.array_equal(np.asarray(images[-1]), np.asarray(final))


def test_recording_does_not_change_the_samples(pipe):
    plain = pipe(class_labels=[0, 3, None], guidance_scale=1.5, generator=torch.Generator().manual_seed(0),
                 fast_path=False, output_type="pt")
    recorded = sample(pipe, ScaleStripRecorder(), output_type="pt")
    assert torch.equal(plain.images, recorded.images)
    assert all(torch.equal(a, b) for a, b in zip(plain.token_maps, recorded.token_maps))


def test_pipeline_image_estimate_is_used_when_given(pipe):
    from_f_hat, from_estimate = ScaleStripRecorder(), ScaleStripRecorder()
    sample(pipe, from_f_hat)
    sample(pipe, from_estimate, tensor_inputs=["image_estimate"])
    for a, b in zip(from_f_hat.estimates(), from_estimate.estimates()):
        assert torch.equal(a, b)


def test_chunks_are_joined_in_batch_order(pipe):
    generators = lambda: [torch.Generator().manual_seed(s) for s in range(3)]  # noqa: E731 - chunk-independent draws
    whole, chunked = ScaleStripRecorder(), ScaleStripRecorder()
    sample(pipe, whole, generator=generators())
    sample(pipe, chunked, generator=generators(), max_batch_size=2)  # chunks of 2 and 1
    assert len(chunked._chunks) == 2
    for a, b in zip(whole.estimates(), chunked.estimates()):
        torch.testing.assert_close(a, b)


def test_progress_hook_sees_every_scale(pipe):
    seen = []
    sample(pipe, ScaleStripRecorder(on_scale=lambda k, n: seen.append((k, n))))
    K = len(TINY_PATCH_NUMS)
    assert seen == [(k, K) for k in range(K)]


def test_recorder_errors_are_clear(pipe):
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        sample(pipe, ScaleStripRecorder(), tensor_inputs=["token_map"])
    with pytest.raises(ValueError, match="recorded nothing"):
        ScaleStripRecorder().estimates()
    recorder = ScaleStripRecorder()
    sample(pipe, recorder)
    with pytest.raises(RuntimeError, match="one recorder per pipeline call"):
        recorder(pipe, 1, 1, {"f_hat": torch.zeros(1, 8, 4, 4)})


def test_make_scale_strip_layout_and_nearest_upscaling():
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8)) for s in (4, 8, 8)]
    strip = make_scale_strip(images, tile_size=16, padding=2)
    assert strip.size == (3 * (16 + 2) + 2, 16 + 4)
    strip_np = np.asarray(strip)
    for k, image in enumerate(images):
        x = 2 + k * 18
        tile = strip_np[2:18, x:x + 16]
        factor = 16 // image.width
        expected = np.asarray(image).repeat(factor, axis=0).repeat(factor, axis=1)
        assert np.array_equal(tile, expected), f"tile {k} is not the nearest-neighbour upscale of estimate {k}"
    # Padding is background.
    assert (strip_np[:2] == 255).all() and (strip_np[:, :2] == 255).all()


def test_make_scale_strip_labels_and_defaults():
    images = [PIL.Image.new("RGB", (32, 32), (0, 0, 0))] * 3
    plain = make_scale_strip(images)
    assert plain.size == (3 * (64 + 4) + 4, 64 + 8)  # default tile: at least 64 pixels
    labelled = make_scale_strip(images, labels=scale_labels((1, 2, 4)))
    assert labelled.width == plain.width and labelled.height > plain.height
    caption = np.asarray(labelled)[plain.height:]
    assert (caption < 128).any(), "the captions drew nothing"
    assert scale_labels((1, 2, 4)) == ["1x1", "2x2", "4x4"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(images_per_scale=[]), "at least one image"),
        (dict(images_per_scale=[np.zeros((4, 4, 3))]), "PIL images"),
        (dict(images_per_scale=[PIL.Image.new("RGB", (4, 4))], labels=["1x1", "2x2"]), "one label per scale"),
        (dict(images_per_scale=[PIL.Image.new("RGB", (4, 4))], tile_size=0), "tile_size"),
        (dict(images_per_scale=[PIL.Image.new("RGB", (4, 4))], padding=-1), "padding"),
    ],
)
def test_make_scale_strip_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_scale_strip(**kwargs)


def test_tensor_to_pil_matches_the_pipeline_rounding(pipe):
    out_pt = pipe(class_labels=[1], generator=torch.Generator().manual_seed(3), fast_path=False, output_type="pt")
    out_pil = pipe(class_labels=[1], generator=torch.Generator().manual_seed(3), fast_path=False)
    assert np.array_equal(np.asarray(tensor_to_pil(out_pt.images)[0]), np.asarray(out_pil.images[0]))


def test_module_docstring_example_runs():
    import doctest

    import var_hf.scale_strip

    result = doctest.testmod(var_hf.scale_strip, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
