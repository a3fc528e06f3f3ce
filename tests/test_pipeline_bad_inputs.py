"""Bad arguments to `VARPipeline.__call__`, editing inputs and loading: each is refused with a `ValueError` that names
the parameter, before the transformer runs. Written against behaviour (error type, the parameter's name in the
message, no model work), not exact wording."""

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch

from var_hf import VARPipeline
from test_pipeline_var import gen, make_pipeline

IMAGE = np.full((16, 16, 3), 0.5, np.float32)
BOX = (0.25, 0.25, 0.75, 0.75)


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline(num_classes=5)


def transformer_calls(pipe):
    calls = []
    original = pipe.transformer.forward_scale
    pipe.transformer.forward_scale = lambda *a, **k: calls.append(1) or original(*a, **k)
    return calls


BAD_CALLS = [
    ("class_labels", dict(class_labels=[])),
    ("class_labels", dict(class_labels=np.array([], dtype=np.int64))),
    ("guidance_scale", dict(guidance_scale=math.nan)),
    ("guidance_scale", dict(guidance_scale=math.inf)),
    ("guidance_scale", dict(guidance_scale=-1.0)),
    ("guidance_scale", dict(guidance_scale="4")),
    ("guidance_scale", dict(guidance_scale=torch.tensor([4.0, 1.0]))),
    ("temperature", dict(temperature=math.nan)),
    ("temperature", dict(temperature=-0.5)),
    ("temperature", dict(temperature=0)),
    ("temperature", dict(temperature="1")),
    ("temperature", dict(temperature=[])),
    ("temperature", dict(temperature=[1.0, 1.0])),  # the tiny pipeline samples more scales than 2
    ("temperature", dict(temperature=[1.0, 1.0, math.nan, 1.0])),
    ("temperature", dict(temperature=[1.0, 0.0, 1.0, 1.0])),
    ("temperature", dict(temperature=[1.0, "1", 1.0, 1.0])),
    ("top_p", dict(top_p=math.nan)),
    ("top_p", dict(top_p=1.5)),
    ("top_p", dict(top_p="0.9")),
    ("top_k", dict(top_k=2.5)),
    ("top_k", dict(top_k="900")),
    ("top_k", dict(top_k=-1)),
    ("top_k", dict(top_k=True)),
    ("more_smooth", dict(more_smooth="yes")),
    ("generator", dict(generator="seed-0")),
    ("generator", dict(generator=0)),
    ("generator", dict(generator=[gen(0), "seed-1"])),
    ("generator", dict(generator=[gen(0)])),
    ("num_images_per_label", dict(num_images_per_label=0)),
    ("num_images_per_label", dict(num_images_per_label=None)),
    ("num_images_per_label", dict(num_images_per_label=2.0)),
    ("num_images_per_label", dict(num_images_per_label=10**8)),
    ("num_images_per_label", dict(num_images_per_label=10**15)),
    ("max_batch_size", dict(max_batch_size=0)),
    ("max_batch_size", dict(max_batch_size="4")),
    ("fast_path", dict(fast_path="yes")),
    ("output_type", dict(output_type="jpeg")),
    ("return_dict", dict(return_dict="no")),
    ("callback_on_step_end", dict(callback_on_step_end="print")),
    ("callback_on_step_end_tensor_inputs", dict(callback_on_step_end=lambda *a: {},
                                                callback_on_step_end_tensor_inputs=["latents"])),
    ("mask_image", dict(mask_image=BOX)),
    ("mask_image", dict(image=IMAGE)),
    ("mask_image", dict(image=IMAGE, mask_image=(0.5, 0.1, 0.2, 0.5))),
    ("mask_image", dict(image=IMAGE, mask_image=np.full((16, 16), np.nan, np.float32))),
    ("mask_image", dict(image=IMAGE, mask_image=np.zeros((7, 7), np.float32))),
    ("mask_image", dict(image=IMAGE, mask_image=np.full((16, 16), 3.0, np.float32))),
    ("image", dict(image="photo.png", mask_image=BOX)),
    ("image", dict(image=np.full((16, 16, 3), np.nan, np.float32), mask_image=BOX)),
    ("image", dict(image=np.full((16, 16, 3), np.inf, np.float32), mask_image=BOX)),
    ("image", dict(image=np.full((16, 16, 3), 200.0, np.float32), mask_image=BOX)),  # 0..255 as floats: refused
    ("image", dict(image=np.zeros((16, 16, 3), np.int32), mask_image=BOX)),
    ("image", dict(image=np.zeros((16, 16, 7), np.uint8), mask_image=BOX)),
    ("image", dict(image=[], mask_image=BOX)),
    ("image", dict(image=[IMAGE, IMAGE, IMAGE], mask_image=BOX)),
]


@pytest.mark.parametrize("parameter, kwargs", BAD_CALLS, ids=[f"{p}-{i}" for i, (p, _) in enumerate(BAD_CALLS)])
def test_a_bad_argument_is_named_before_any_work(pipe, parameter, kwargs):
    kwargs = {"class_labels": [0, 1], **kwargs}
    calls = transformer_calls(pipe)
    try:
        with pytest.raises(ValueError) as error:
            pipe(**kwargs)
    finally:
        del pipe.transformer.forward_scale
    assert parameter in str(error.value)
    assert not calls, "the transformer ran before the bad argument was refused"


def test_none_means_the_pipelines_default(pipe):
    """`None` for a sampling setting is the pipeline's saved default (diffusers' idiom for config-driven defaults)."""
    explicit = pipe(class_labels=[0, 1], generator=gen(0), output_type="latent", **pipe.sampling_defaults)
    implicit = pipe(class_labels=[0, 1], generator=gen(0), output_type="latent", guidance_scale=None, top_k=None,
                    top_p=None, temperature=None, more_smooth=None)
    assert all(torch.equal(a, b) for a, b in zip(explicit.token_maps, implicit.token_maps))


# ------------------------------------------------------------------ editing inputs mean what they mean in diffusers


@pytest.fixture(scope="module")
def photo():
    rng = np.random.RandomState(0)
    return PIL.Image.fromarray((rng.rand(16, 16, 3) * 255).astype(np.uint8))


@pytest.mark.parametrize("as_input", [
    lambda im: np.array(im),                                            # uint8 HWC 0..255, as np.array(pil) gives
    lambda im: np.array(im)[None],                                      # a batch of one
    lambda im: np.array(im).astype(np.float32) / 255.0,                 # float HWC in [0, 1]
    lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1),         # uint8 CHW tensor
    lambda im: torch.from_numpy(np.array(im)).permute(2, 0, 1) / 255.0,  # float CHW tensor in [0, 1]
    lambda im: im.convert("RGBA"),                                      # RGBA PIL image: its RGB
])
def test_image_formats_mean_the_same_image(pipe, photo, as_input):
    kwargs = dict(class_labels=[2], mask_image=BOX, output_type="latent")
    expected = pipe(image=photo, generator=gen(1), **kwargs).token_maps
    got = pipe(image=as_input(photo), generator=gen(1), **kwargs).token_maps
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


@pytest.mark.parametrize("as_input", [
    lambda m: np.array(m),                            # uint8 0/255 (and a grey level at 128)
    lambda m: np.array(m).astype(np.float32) / 255.0,
    lambda m: torch.from_numpy(np.array(m))[None],    # uint8 (1, H, W) tensor
])
def test_mask_formats_mean_the_same_mask(pipe, photo, as_input):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 2:9] = 255
    mask[0:4, 0:16] = 128  # 128 / 255 is just above 0.5, so a grey mask must be read in [0, 1], not as 128
    mask = PIL.Image.fromarray(mask)
    kwargs = dict(class_labels=[2], image=photo, output_type="latent")
    expected = pipe(mask_image=mask, generator=gen(1), **kwargs).token_maps
    got = pipe(mask_image=as_input(mask), generator=gen(1), **kwargs).token_maps
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


# ------------------------------------------------------------------ components and model_index.json


def test_components_that_are_not_vars_are_refused(pipe):
    from diffusers import DDIMScheduler

    with pytest.raises(ValueError, match="scheduler"):
        VARPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, scheduler=DDIMScheduler())
    with pytest.raises(ValueError, match="vqvae"):
        VARPipeline(vqvae=pipe.transformer, transformer=pipe.transformer, scheduler=pipe.scheduler)


@pytest.mark.parametrize("component, entry", [
    ("scheduler", ["diffusers", "DDIMScheduler"]),
    ("vqvae", ["diffusers", "AutoencoderKL"]),
    ("vqvae", ["var_hf.modeling_var", "VARTransformer"]),
    ("transformer", ["transformers", "AutoModel"]),
    ("transformer", None),
])
def test_a_model_index_naming_other_components_is_refused_at_load(pipe, tmp_path, component, entry):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index[component] = entry
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=component):
        VARPipeline.from_pretrained(tmp_path)


def test_sampling_defaults_are_checked_when_the_pipeline_is_built(pipe):
    for bad in ({"top_k": -3}, {"guidance_scale": "high"}, {"cfg": 4.0}, "4.0"):
        with pytest.raises(ValueError, match="top_k|guidance_scale|cfg|sampling_defaults"):
            VARPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, scheduler=pipe.scheduler, sampling_defaults=bad)
