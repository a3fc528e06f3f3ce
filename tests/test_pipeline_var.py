import json
import os

import numpy as np
import PIL.Image
import pytest
import torch

from var_hf import (
    MultiScaleVQVAE,
    MultiScaleVQVAEConfig,
    VARPipeline,
    VARScaleScheduler,
    VARTransformer,
    VARTransformerConfig,
)
from var_hf.commands.var_hf_cli import main as cli_main

PATCH_NUMS = (1, 2, 3, 4)  # 4x4 latent, 16x16 images with channel_multipliers (1, 1, 2)


def make_pipeline(num_classes=5, id2label=None, seed=0, patch_nums=PATCH_NUMS, vocab_size=32):
    torch.manual_seed(seed)
    vqvae = MultiScaleVQVAE(MultiScaleVQVAEConfig(
        base_channels=32, channel_multipliers=(1, 1, 2), num_res_blocks=1, vocab_size=vocab_size, vq_embed_dim=8,
        patch_nums=patch_nums,
    ))
    with torch.no_grad():  # spread the codebook so different tokens decode to different images
        vqvae.quantizer.codebook.weight.normal_(0, 1)
    transformer = VARTransformer(VARTransformerConfig(
        vocab_size=vocab_size, vq_embed_dim=8, num_classes=num_classes, depth=2, embed_dim=32, num_heads=2,
        patch_nums=patch_nums, init_head=1.0, init_adaln_gamma=0.5,
    ))
    pipe = VARPipeline(vqvae=vqvae.eval(), transformer=transformer.eval(),
                       scheduler=VARScaleScheduler(patch_nums=list(patch_nums)), id2label=id2label)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return make_pipeline(id2label={0: "cat", 1: "dog, puppy", 2: "car", 3: "tree", 4: "boat"})


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_output_types_and_token_maps(pipe):
    out = pipe(class_labels=[0, 3], generator=gen(0), output_type="pt")
    assert out.images.shape == (2, 3, 16, 16) and 0 <= out.images.min() and out.images.max() <= 1
    assert [t.shape for t in out.token_maps] == [(2, pn * pn) for pn in PATCH_NUMS]
    # The images are the decoding of the returned token maps.
    decoded = pipe.vqvae.decode_tokens(out.token_maps).add(1).mul(0.5)
    torch.testing.assert_close(out.images, decoded, atol=1e-5, rtol=0)
    np_out = pipe(class_labels=[0, 3], generator=gen(0), output_type="np").images
    assert np_out.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(np_out, out.images.permute(0, 2, 3, 1).numpy(), atol=1e-6)
    pil = pipe(class_labels=[0, 3], generator=gen(0), output_type="pil").images
    assert len(pil) == 2 and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (16, 16)
    latent = pipe(class_labels=[0, 3], generator=gen(0), output_type="latent").images
    assert latent.shape == (2, 8, 4, 4)
    images, token_maps = pipe(class_labels=1, generator=gen(0), return_dict=False, output_type="np")
    assert images.shape == (1, 16, 16, 3) and len(token_maps) == len(PATCH_NUMS)


def test_seed_determinism(pipe):
    a = pipe(class_labels=[0, 1, 2], generator=gen(1), output_type="np").images
    b = pipe(class_labels=[0, 1, 2], generator=gen(1), output_type="np").images
    c = pipe(class_labels=[0, 1, 2], generator=gen(2), output_type="np").images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_a_per_scale_temperature_acts_on_its_own_scale(pipe):
    """A list gives scale k the temperature at index k: equal values are the single number, and raising only the
    last scale's temperature leaves every coarser token map as it was."""
    K = len(PATCH_NUMS)
    kwargs = dict(class_labels=[0, 1, 2, 3], output_type="latent", top_k=0, top_p=0.0)
    single = pipe(generator=gen(3), temperature=1.0, **kwargs).token_maps
    as_list = pipe(generator=gen(3), temperature=[1.0] * K, **kwargs).token_maps
    assert all(torch.equal(a, b) for a, b in zip(single, as_list))
    hot_last = pipe(generator=gen(3), temperature=[1.0] * (K - 1) + [50.0], **kwargs).token_maps
    assert all(torch.equal(a, b) for a, b in zip(single[:-1], hot_last[:-1]))
    assert not torch.equal(single[-1], hot_last[-1])
    hot_first = pipe(generator=gen(3), temperature=[50.0] + [1.0] * (K - 1), **kwargs).token_maps
    assert not torch.equal(single[0], hot_first[0])


def test_mixed_labels_and_names(pipe):
    assert pipe.get_label_ids([2, "dog", "Puppy", None, "CAT"]) == [2, 1, 1, 5, 0]
    out = pipe(class_labels=[2, "dog", None], num_images_per_label=2, generator=gen(0), output_type="np")
    assert out.images.shape == (6, 16, 16, 3)
    assert pipe.labels["tree"] == 3
    with pytest.raises(ValueError, match=r"Unknown class name 'dgo'.*dog"):
        pipe(class_labels=["dgo"])
    with pytest.raises(ValueError, match="out of range"):
        pipe(class_labels=[5])


def test_labels_as_a_tensor_or_array(pipe):
    """The reference's `label_B` is a LongTensor: a 1-d tensor or array is one id per image."""
    expected = pipe(class_labels=[2, 1], generator=gen(0), output_type="np").images
    for labels in (torch.tensor([2, 1]), np.array([2, 1])):
        np.testing.assert_array_equal(pipe(class_labels=labels, generator=gen(0), output_type="np").images, expected)
    assert pipe.get_label_ids(torch.tensor(3)) == [3]
    with pytest.raises(ValueError, match="0-d or 1-d"):
        pipe(class_labels=torch.tensor([[2, 1]]))
    with pytest.raises(ValueError, match="out of range"):
        pipe(class_labels=torch.tensor([0, 5]))


def test_random_class_labels_are_drawn_like_the_reference(pipe):
    """`random_class_labels` then sampling from the same generator is the reference's `label_B=None` run: its labels
    come from one multinomial over the classes (never the null class), and the sampling continues the stream."""
    generator = gen(3)
    labels = pipe.random_class_labels(64, generator=generator)
    # The reference's draw, `torch.multinomial(uniform_prob, B, replacement=True, generator=rng)`, written out.
    expected = torch.multinomial(torch.full((1, 5), 0.2), 64, replacement=True, generator=gen(3)).reshape(-1).tolist()
    assert labels == expected and set(labels) == set(range(5))
    after_draw = pipe(class_labels=labels[:2], generator=generator, output_type="np").images
    fresh = pipe(class_labels=labels[:2], generator=gen(3), output_type="np").images
    assert np.abs(after_draw - fresh).max() > 1e-3  # the labels used up part of the stream, as in the reference
    torch.manual_seed(5)
    default_draw = pipe.random_class_labels(8)  # generator=None: the device's default generator, like g_seed=None
    torch.manual_seed(5)
    assert default_draw == pipe.random_class_labels(8)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
            pipe.random_class_labels(bad)
    with pytest.raises(ValueError, match="one torch.Generator"):
        pipe.random_class_labels(2, generator=[gen(0), gen(1)])


def test_per_image_generators_equal_single_images(pipe):
    batched = pipe(class_labels=[0, 4], generator=[gen(10), gen(11)], output_type="np").images
    first = pipe(class_labels=[0], generator=gen(10), output_type="np").images
    second = pipe(class_labels=[4], generator=gen(11), output_type="np").images
    np.testing.assert_allclose(batched, np.concatenate([first, second]), atol=1e-5)


def test_greedy_sampling_matches_teacher_forcing(pipe):
    """With top_k=1 and no guidance every sampled map is the argmax of the full-sequence forward on the samples:
    the cached scale-by-scale path and the block-causal training path agree."""
    out = pipe(class_labels=[1, 3], guidance_scale=0.0, top_k=1, generator=gen(0), output_type="latent")
    labels = torch.tensor([1, 3])
    logits = pipe.transformer(labels, pipe.vqvae.teacher_forcing_input(out.token_maps)).logits
    assert torch.equal(logits.argmax(-1), torch.cat(out.token_maps, dim=1))


def test_callback_gets_coarse_to_fine_estimates(pipe):
    seen = []

    def callback(p, scale_index, timestep, tensors):
        seen.append((scale_index, tensors["image_estimate"].clone(), tensors["token_map"].shape))
        return {}

    out = pipe(class_labels=[0], generator=gen(0), output_type="pt", callback_on_step_end=callback,
               callback_on_step_end_tensor_inputs=["image_estimate", "token_map"])
    assert [s for s, _, _ in seen] == list(range(len(PATCH_NUMS)))
    assert [shape for _, _, shape in seen] == [(1, pn * pn) for pn in PATCH_NUMS]
    torch.testing.assert_close(seen[-1][1], out.images, atol=1e-6, rtol=0)
    assert (seen[0][1] - seen[-1][1]).abs().max() > 1e-4


def test_an_f_hat_returned_at_scale_k_is_the_input_of_scale_k_plus_1(pipe):
    """A callback that replaces f_hat after scale k changes what scale k+1 sees: its input is the area-downsampled new
    f_hat, so its tokens follow (diffusers' `callback_on_step_end` returning `latents`)."""
    inputs = []
    original = pipe.transformer.forward_scale
    pipe.transformer.forward_scale = lambda x, *a, **k: inputs.append(x.clone()) or original(x, *a, **k)
    replaced = {}

    def replace_f_hat(p, step_index, timestep, callback_kwargs):
        if step_index != 0:
            return {}
        replaced["f_hat"] = torch.randn(callback_kwargs["f_hat"].shape, generator=gen(99)) * 3
        return {"f_hat": replaced["f_hat"].clone()}  # the pipeline adds the next scales to it in place

    kwargs = dict(class_labels=[0, 3], guidance_scale=0.0, top_k=1, output_type="latent")
    try:
        plain = pipe(generator=gen(0), **kwargs)
        inputs.clear()
        edited = pipe(generator=gen(0), callback_on_step_end=replace_f_hat, callback_on_step_end_tensor_inputs=["f_hat"],
                      **kwargs)
    finally:
        del pipe.transformer.forward_scale
    area = torch.nn.functional.interpolate(replaced["f_hat"], size=(PATCH_NUMS[1],) * 2, mode="area")
    expected_x = pipe.transformer.embed_next_scale(1, area.flatten(2).transpose(1, 2)).repeat(2, 1, 1)
    torch.testing.assert_close(inputs[1], expected_x, rtol=0, atol=0)
    assert torch.equal(plain.token_maps[0], edited.token_maps[0])
    assert not torch.equal(plain.token_maps[1], edited.token_maps[1])  # the old order left scale 1 unchanged


@pytest.mark.parametrize("bad_f_hat, message", [
    (lambda f: f[:1], "shape"),
    (lambda f: f.double(), "float64"),
    (lambda f: f.clone().fill_(float("nan")), "NaN"),
    (lambda f: f.numpy(), "ndarray"),
])
def test_a_callback_returning_a_bad_f_hat_is_named(pipe, bad_f_hat, message):
    def callback(p, step_index, timestep, callback_kwargs):
        return {"f_hat": bad_f_hat(callback_kwargs["f_hat"])}

    with pytest.raises(ValueError, match=f"callback_on_step_end.*f_hat(.|\n)*{message}"):
        pipe(class_labels=[0, 1], generator=gen(0), callback_on_step_end=callback,
             callback_on_step_end_tensor_inputs=["f_hat"])


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["id2label"]["1"] == "dog, puppy"
    assert {"vqvae", "transformer", "scheduler"} <= set(index)
    loaded = VARPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.get_label_ids("boat") == [4]
    a = pipe(class_labels=[0, "tree"], generator=gen(3), output_type="np").images
    b = loaded(class_labels=[0, "tree"], generator=gen(3), output_type="np").images
    np.testing.assert_array_equal(a, b)


def _hub_snapshot(tmp_path, pipe, repo_id="someone/tiny-var"):
    """Lay a saved pipeline out like huggingface_hub's cache: models--org--name/{refs/main, snapshots/<sha>/...}."""
    cache = tmp_path / "hub"
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    pipe.save_pretrained(repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    return cache


def test_load_by_repo_id_from_hub_snapshot(pipe, tmp_path):
    cache = _hub_snapshot(tmp_path, pipe)
    loaded = VARPipeline.from_pretrained("someone/tiny-var", cache_dir=str(cache), local_files_only=True)
    loaded.set_progress_bar_config(disable=True)
    a = pipe(class_labels=[2], generator=gen(4), output_type="np").images
    b = loaded(class_labels=[2], generator=gen(4), output_type="np").images
    np.testing.assert_array_equal(a, b)
    with pytest.raises(OSError, match="someone/missing"):
        VARPipeline.from_pretrained("someone/missing", cache_dir=str(cache), local_files_only=True)


def test_imagenet_names_for_1000_classes():
    pipe = make_pipeline(num_classes=1000)
    assert pipe.get_label_ids(["golden retriever", "Tinca tinca", 3]) == [207, 0, 3]
    with pytest.raises(ValueError, match="ambiguous"):
        pipe.get_label_ids("crane")
    with pytest.raises(ValueError, match="golden retriever"):
        pipe.get_label_ids("golden retreiver")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(temperature=0.0), "temperature"),
        (dict(generator=[torch.Generator()]), "1 generators for a batch of 2"),
        (dict(output_type="jpeg"), "output_type"),
        (dict(num_images_per_label=0), "num_images_per_label"),
        (dict(mask_image=(0.1, 0.1, 0.5, 0.5)), "without image"),
        (dict(image="photo.png", mask_image=(0.1, 0.1, 0.5, 0.5)), "image must be"),
        (dict(image=np.zeros((16, 16, 3), np.float32)), "needs mask_image"),
        (dict(image=np.zeros((16, 16, 3), np.float32), mask_image=np.zeros((7, 7), np.float32)), "mask_image has size"),
        (dict(image=np.zeros((16, 16, 3), np.float32), mask_image=(0.5, 0.1, 0.2, 0.5)), "box"),
    ],
)
def test_bad_inputs_fail_before_sampling(pipe, kwargs, message):
    calls = []
    original = pipe.transformer.forward_scale
    pipe.transformer.forward_scale = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        with pytest.raises(ValueError, match=message):
            pipe(class_labels=[0, 1], **kwargs)
    finally:
        del pipe.transformer.forward_scale
    assert not calls, "the transformer ran before the bad input was rejected"


# ------------------------------------------------------------------ zero-shot editing


@pytest.fixture(scope="module")
def photo():
    skimage_data = pytest.importorskip("skimage.data")
    return PIL.Image.fromarray(skimage_data.astronaut()).resize((16, 16), PIL.Image.LANCZOS)


def test_inpainting_keeps_unmasked_tokens(pipe, photo):
    pixels = pipe.image_processor.preprocess(photo, height=16, width=16)
    image_tokens = pipe.vqvae.encode_tokens(pixels)
    mask = np.zeros((16, 16), np.float32)
    mask[4:12, 4:12] = 1.0  # white square: regenerate
    out = pipe(class_labels=[None, 2], image=photo, mask_image=mask, generator=gen(0), output_type="np")
    keep = torch.ones(4, 4, dtype=torch.bool)
    keep[1:3, 1:3] = False
    finest = out.token_maps[-1].view(2, 4, 4)
    for b in range(2):
        assert torch.equal(finest[b][keep], image_tokens[-1].view(4, 4)[keep])
    # The first scales (<= 3 tokens) are always forced from the image, as in the reference demo.
    assert torch.equal(out.token_maps[0], image_tokens[0].expand(2, -1))
    assert not torch.equal(finest[:, ~keep], image_tokens[-1].view(4, 4)[~keep].expand(2, -1))


def test_outpainting_with_box_and_full_keep(pipe, photo):
    out = pipe(class_labels=[3], image=photo, mask_image=(0.0, 0.0, 0.5, 1.0), generator=gen(1), output_type="np")
    pixels = pipe.image_processor.preprocess(photo, height=16, width=16)
    image_tokens = pipe.vqvae.encode_tokens(pixels)
    assert torch.equal(out.token_maps[-1].view(4, 4)[2:], image_tokens[-1].view(4, 4)[2:])
    # Keeping everything reproduces the image's own reconstruction.
    black = PIL.Image.new("L", photo.size, 0)
    kept = pipe(class_labels=[3], image=photo, mask_image=black, generator=gen(1), output_type="pt")
    assert all(torch.equal(a, b) for a, b in zip(kept.token_maps, image_tokens))
    reconstruction = pipe.vqvae.decode_tokens(image_tokens).add(1).mul(0.5)
    torch.testing.assert_close(kept.images, reconstruction, atol=1e-5, rtol=0)


def test_a_batched_tensor_image_is_a_batch_of_images(pipe, photo):
    pixels = torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 255
    other = pixels.flip(-1)
    kwargs = dict(class_labels=[1, 2], mask_image=(0.25, 0.25, 0.75, 0.75), output_type="pt")
    batched = pipe(image=torch.stack([pixels, other]), generator=gen(3), **kwargs)
    listed = pipe(image=[pixels, other], generator=gen(3), **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(batched.token_maps, listed.token_maps))
    encoded = pipe.vqvae.encode_tokens(torch.stack([pixels, other]) * 2 - 1)
    assert torch.equal(batched.token_maps[0], encoded[0])  # each image keeps its own first-scale token


def test_editing_under_autocast_encodes_at_full_precision(pipe, photo):
    """The reference encodes the image to edit outside autocast; under the caller's autocast the pipeline still
    encodes in the weights' dtype, so the kept tokens are the full-precision ones (and encoding does not fail on a
    bf16 latent meeting a float32 codebook)."""
    pixels = pipe.image_processor.preprocess(photo, height=16, width=16)
    full_precision = pipe.vqvae.encode_tokens(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert all(torch.equal(a, b) for a, b in zip(pipe.vqvae.encode_tokens(pixels), full_precision))
        black = PIL.Image.new("L", photo.size, 0)
        kept = pipe(class_labels=[3], image=photo, mask_image=black, generator=gen(1), output_type="pt")
    assert all(torch.equal(a, b) for a, b in zip(kept.token_maps, full_precision))


def test_bfloat16_sampling_runs(tmp_path):
    pipe = make_pipeline().to(dtype=torch.bfloat16)
    out = pipe(class_labels=[0, 1], generator=gen(0), output_type="pt", more_smooth=True)
    assert out.images.dtype == torch.float32 and torch.isfinite(out.images).all()


# ------------------------------------------------------------------ command line


def test_generate_command(pipe, tmp_path, capsys):
    model_dir = tmp_path / "model"
    pipe.save_pretrained(model_dir)
    out_dir = tmp_path / "samples"
    rc = cli_main(["generate", "--model", str(model_dir), "--label", "dog", "--label", "4", "--label", "none",
                   "--num-images-per-label", "2", "--seed", "0", "--guidance-scale", "2", "--out", str(out_dir)])
    assert rc == 0
    files = sorted(os.listdir(out_dir))
    assert "grid.png" in files and len([f for f in files if f.endswith(".png")]) == 7
    assert any("_1_dog" in f for f in files) and any("uncond" in f for f in files)
    first = PIL.Image.open(out_dir / files[0])
    assert first.size == (16, 16)
    # A per-scale temperature on the command line is the same list given to the pipeline.
    rc = cli_main(["generate", "--model", str(model_dir), "--label", "dog", "--seed", "0", "--temperature",
                   "2,1,1,1", "--out", str(tmp_path / "per_scale")])
    expected = pipe(class_labels=[1], generator=gen(0), temperature=[2.0, 1.0, 1.0, 1.0], output_type="np").images[0]
    written = np.asarray(PIL.Image.open(tmp_path / "per_scale" / sorted(os.listdir(tmp_path / "per_scale"))[0]))
    assert rc == 0 and np.array_equal(written, (expected * 255).round().astype(np.uint8))
    rc = cli_main(["generate", "--model", str(model_dir), "--label", "dog", "--temperature", "2,1",
                   "--out", str(tmp_path / "bad")])
    assert rc == 2 and "temperature has 2 values but this pipeline samples 4 scales" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    rc = cli_main(["generate", "--model", str(model_dir), "--label", "dgo", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "Unknown class name 'dgo'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    rc = cli_main(["generate", "--model", str(model_dir), "--random-labels", "3", "--label", "dog",
                   "--out", str(tmp_path / "bad")])
    assert rc == 2 and "--random-labels" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_generate_command_with_random_labels_is_the_pipeline_run(pipe, tmp_path):
    model_dir = tmp_path / "model"
    pipe.save_pretrained(model_dir)
    out_dir = tmp_path / "samples"
    assert cli_main(["generate", "--model", str(model_dir), "--random-labels", "3", "--seed", "7",
                     "--guidance-scale", "2", "--out", str(out_dir)]) == 0
    generator = gen(7)
    labels = pipe.random_class_labels(3, generator=generator)
    expected = pipe(class_labels=labels, guidance_scale=2, generator=generator, output_type="pil").images
    files = sorted(f for f in os.listdir(out_dir) if f != "grid.png")
    assert [int(f.split("_")[1]) for f in files] == labels
    for name, image in zip(files, expected):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(out_dir / name)), np.asarray(image))


def test_generate_help_documents_every_option(capsys):
    try:  # the commands return 0 after printing help (argparse itself would exit)
        rc = cli_main(["generate", "--help"])
    except SystemExit as exit_:
        rc = exit_.code
    assert rc in (0, None)
    text = capsys.readouterr().out
    for flag in ("--model", "--label", "--seed", "--guidance-scale", "--top-k", "--top-p", "--temperature",
                 "--more-smooth", "--num-images-per-label", "--random-labels", "--batch-size", "--device", "--dtype", "--fast-path", "--out"):
        assert flag in text


@pytest.mark.parametrize("method", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_cpu_offload_is_refused_with_the_reason(pipe, method):
    with pytest.raises(NotImplementedError, match="does not support CPU offloading"):
        getattr(pipe, method)()
    # The pipeline is untouched and still samples.
    assert pipe(class_labels=[0], generator=gen(0), output_type="pt").images.shape[0] == 1
