"""The web demo's functions without a browser: page values -> pipeline arguments, the two actions, error display,
the editor's mask, the Space app, and the `var-hf demo` command's argument checks."""

import os
import runpy

import numpy as np
import PIL.Image
import pytest
import torch

from var_hf import DEFAULT_MODEL, VARPipeline
from var_hf.commands import UsageError
from var_hf.demo.app import (
    REGIONS,
    UNCONDITIONAL,
    DemoError,
    class_choices,
    class_label_from_choice,
    enlarge,
    format_error,
    mask_from_editor,
    prepare_gradio_environment,
    run_edit,
    run_generate,
    sampling_kwargs,
)
from var_hf.demo.space import MODEL_ENV, validate_space_app, write_space_app
from var_hf.scale_strip import make_scale_strip, scale_labels

from conftest import TINY_PATCH_NUMS, perturb_


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    perturb_(tiny_pipeline.transformer, std=0.2, seed=2)
    tiny_pipeline.set_progress_bar_config(disable=True)
    return tiny_pipeline


@pytest.fixture(scope="module")
def fashion_pipe():
    pipe = VARPipeline.from_pretrained(DEFAULT_MODEL)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def settings(**overrides):
    values = dict(class_choice="2", seed=5, guidance_scale=1.5, top_k=8, top_p=0.9, more_smooth=False)
    values.update(overrides)
    return values


# ------------------------------------------------------------------ classes


def test_class_choices_list_unconditional_then_every_class_in_id_order(fashion_pipe):
    choices = class_choices(fashion_pipe)
    assert choices[0] == (UNCONDITIONAL, UNCONDITIONAL)
    assert choices[1:] == [(fashion_pipe.id2label[i], str(i)) for i in range(10)]
    assert ("Sneaker", "7") in choices


def test_duplicate_class_names_show_their_id(pipe):
    duplicated = VARPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, scheduler=pipe.scheduler,
                             id2label={0: "crane", 1: "crane", 2: "cat", 3: "dog"})
    assert class_choices(duplicated)[1:3] == [("crane (0)", "0"), ("crane (1)", "1")]


def test_class_label_from_choice(fashion_pipe):
    assert class_label_from_choice(fashion_pipe, UNCONDITIONAL) is None
    assert class_label_from_choice(fashion_pipe, "7") == 7
    assert class_label_from_choice(fashion_pipe, "Sneaker") == 7
    assert class_label_from_choice(fashion_pipe, 9) == 9
    with pytest.raises(ValueError, match="(?i)closest.*sneaker"):  # the pipeline's own message names the closest class
        class_label_from_choice(fashion_pipe, "Sneeker")
    with pytest.raises(DemoError, match="Choose a class"):
        class_label_from_choice(fashion_pipe, "")
    with pytest.raises(ValueError):
        class_label_from_choice(fashion_pipe, "10")  # no class 10


# ------------------------------------------------------------------ page values -> pipeline arguments


def test_sampling_kwargs_map_the_page_to_the_pipeline(pipe):
    kwargs = sampling_kwargs(pipe, "2", 5.0, 1.5, 8.0, 0.9, 1, num_images=3.0)
    generator = kwargs.pop("generator")
    assert kwargs == dict(class_labels=2, num_images_per_label=3, guidance_scale=1.5, top_k=8, top_p=0.9, more_smooth=True)
    assert isinstance(kwargs["top_k"], int) and isinstance(kwargs["num_images_per_label"], int)
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(5).get_state())
    assert sampling_kwargs(pipe, UNCONDITIONAL, 0, 0, 0, 0, False)["class_labels"] is None


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(seed=0.5), "Seed must be a whole number"),
        (dict(seed=None), "Seed is empty"),
        (dict(seed=-1), "Seed must be a whole number from 0"),
        (dict(top_k=2.5), "Top-k must be a whole number"),
        (dict(guidance_scale="lots"), "Guidance scale must be a number"),
        (dict(top_p=float("nan")), "Top-p must be a finite number"),
        (dict(num_images=0), "Number of images must be a whole number from 1 to 16"),
        (dict(num_images=17), "Number of images must be a whole number from 1 to 16"),
    ],
)
def test_sampling_kwargs_reject_bad_page_values(pipe, overrides, match):
    values = dict(settings(), num_images=1)
    values.update(overrides)
    with pytest.raises(DemoError, match=match):
        sampling_kwargs(pipe, **values)


# ------------------------------------------------------------------ generate


def test_run_generate_gives_the_pipeline_images_and_one_strip_each(pipe):
    steps = []
    out = run_generate(pipe, num_images=2, progress=lambda done, desc: steps.append((done, desc)), **settings())
    assert out.message.startswith("2 images of")
    direct = pipe(class_labels=2, num_images_per_label=2, guidance_scale=1.5, top_k=8, top_p=0.9,
                  generator=torch.Generator().manual_seed(5)).images
    assert [caption for _, caption in out.images] == ["2, seed 5, image 1", "2, seed 5, image 2"]
    for (image, _), expected in zip(out.images, direct):
        assert np.array_equal(np.asarray(image), np.asarray(expected))
    K = len(TINY_PATCH_NUMS)
    assert len(out.strips) == 2
    blank = [PIL.Image.new("RGB", out.images[0][0].size)] * K
    assert all(strip.size == make_scale_strip(blank, labels=scale_labels(TINY_PATCH_NUMS)).size for strip in out.strips)
    assert [done for done, _ in steps] == [(k + 1, K) for k in range(K)]
    assert steps[-1][1] == f"scale {K}/{K}: 4x4 tokens"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (dict(guidance_scale=-1), r"guidance\_scale must be \>= 0"),
        (dict(top_p=1.5), r"top\_p"),
        (dict(class_choice="9"), "9"),
        (dict(seed="abc"), "Seed must be a whole number"),
    ],
)
def test_run_generate_shows_argument_errors_as_one_readable_line(pipe, overrides, fragment):
    out = run_generate(pipe, num_images=1, **settings(**overrides))
    assert out.images == [] and out.strips == []
    assert out.message.startswith("**Error:** ") and fragment in out.message
    assert "\n" not in out.message and "Traceback" not in out.message


def test_format_error_names_unexpected_errors_and_escapes_markdown():
    assert format_error(ValueError("top_k must be >= 0")) == r"**Error:** top\_k must be \>= 0"
    message = format_error(RuntimeError("CUDA out\nof memory"))
    assert message == "**Error:** RuntimeError: CUDA out of memory \\(details in the server log\\)"


# ------------------------------------------------------------------ edit


def _editor_value(size=64, painted_box=(16, 16, 48, 48)):
    rng = np.random.default_rng(0)
    background = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert("RGBA")
    layer = np.zeros((size, size, 4), dtype=np.uint8)
    y0, x0, y1, x1 = painted_box
    layer[y0:y1, x0:x1] = (255, 0, 255, 255)
    return {"background": background, "layers": [PIL.Image.fromarray(layer)], "composite": None}


def test_mask_from_editor_is_the_painted_pixels_plus_the_region():
    value = _editor_value()
    image, mask = mask_from_editor(value)
    assert image.mode == "RGB" and image.size == (64, 64) and mask.mode == "L"
    mask_np = np.asarray(mask) > 0
    expected = np.zeros((64, 64), bool)
    expected[16:48, 16:48] = True
    assert np.array_equal(mask_np, expected)
    _, with_region = mask_from_editor(value, "left half")
    expected[:, :32] = True
    assert np.array_equal(np.asarray(with_region) > 0, expected)
    # A layer of another size (the editor's canvas) is scaled to the image.
    value["layers"] = [value["layers"][0].resize((32, 32), PIL.Image.NEAREST)]
    assert np.array_equal(np.asarray(mask_from_editor(value)[1]) > 0, np.asarray(mask) > 0)


def test_mask_from_editor_regions_cover_what_they_say():
    blank = {"background": PIL.Image.new("RGB", (40, 40)), "layers": [], "composite": None}
    coverage = {name: (np.asarray(mask_from_editor(blank, name)[1]) > 0).mean() for name in REGIONS if name != "painted only"}
    assert coverage["centre"] == 0.25 and coverage["left half"] == 0.5 and coverage["outside the centre (outpaint)"] == 0.75


@pytest.mark.parametrize(
    "value, region, match",
    [
        (None, "centre", "Upload an image"),
        ({"background": None, "layers": [], "composite": None}, "centre", "Upload an image"),
        ({"background": PIL.Image.new("RGB", (8, 8)), "layers": [], "composite": None}, "painted only", "Nothing to regenerate"),
        ({"background": PIL.Image.new("RGB", (8, 8)), "layers": [], "composite": None}, "everything", "Unknown region"),
    ],
)
def test_mask_from_editor_errors(value, region, match):
    with pytest.raises(DemoError, match=match):
        mask_from_editor(value, region)


def test_run_edit_is_the_pipelines_edit_and_shows_what_the_model_saw(pipe):
    value = _editor_value()
    out = run_edit(pipe, value, "painted only", **settings(class_choice=UNCONDITIONAL))
    assert out.message.startswith("Regenerated 25% of the image as **unconditional**"), out.message
    image, mask = mask_from_editor(value)
    expected = pipe(class_labels=None, image=image, mask_image=mask, guidance_scale=1.5, top_k=8, top_p=0.9,
                    generator=torch.Generator().manual_seed(5)).images[0]
    assert np.array_equal(np.asarray(out.result), np.asarray(expected))
    res = pipe.vqvae.config.image_size
    assert out.image.size == out.mask.size == (res, res)
    mask_np = np.asarray(out.mask.convert("L"), dtype=np.float64) / 255  # the painted centre quarter, white
    assert mask_np[0, 0] == 0 and mask_np[res // 2, res // 2] == 1 and abs(mask_np.mean() - 0.25) < 0.05
    blank = [PIL.Image.new("RGB", (res, res))] * len(TINY_PATCH_NUMS)
    assert out.strip.size == make_scale_strip(blank, labels=scale_labels(TINY_PATCH_NUMS)).size


def test_run_edit_errors_are_shown_not_raised(pipe):
    out = run_edit(pipe, None, "centre", **settings())
    assert out.result is None and out.message.startswith("**Error:** Upload an image")
    out = run_edit(pipe, _editor_value(), "centre", **settings(top_k=-3))
    assert out.result is None and "Top-k must be a whole number from 0" in out.message


def test_example_image_is_an_enlarged_sample_of_the_model(pipe):
    from var_hf.demo.app import example_image

    image = example_image(pipe, "3", seed=4, size=64)
    sample = pipe(class_labels=3, generator=torch.Generator().manual_seed(4)).images[0]
    assert image.size == (64, 64)
    assert np.array_equal(np.asarray(image), np.asarray(enlarge(sample, 64)))


def test_enlarge_is_a_whole_nearest_factor():
    image = PIL.Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    big = enlarge(image, 10)
    assert big.size == (12, 12)
    assert np.array_equal(np.asarray(big)[::3, ::3], np.asarray(image))
    assert enlarge(big, 10) is big


# ------------------------------------------------------------------ the page and its environment


def test_prepare_gradio_environment_keeps_gradio_local(monkeypatch, tmp_path):
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "True")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    created = prepare_gradio_environment()
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert created is not None and os.path.dirname(created) == str(tmp_path) and os.environ["GRADIO_TEMP_DIR"] == created
    assert os.environ["MPLCONFIGDIR"] == os.path.join(created, "matplotlib")
    assert prepare_gradio_environment() is None  # an existing GRADIO_TEMP_DIR is kept
    assert os.environ["GRADIO_TEMP_DIR"] == created


def test_build_demo_lays_out_both_tabs(fashion_pipe, monkeypatch, tmp_path):
    gr = pytest.importorskip("gradio", reason="gradio is the optional extra var_hf[demo]")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    from var_hf.demo.app import build_demo

    demo = build_demo(fashion_pipe)
    assert isinstance(demo, gr.Blocks)
    ids = {block.elem_id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert {"gen-class", "gen-seed", "gen-button", "gen-gallery", "gen-strips", "gen-status",
            "edit-editor", "edit-class", "edit-button", "edit-mask", "edit-result", "edit-strip", "edit-status"} <= ids
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "gen-class")
    assert len(dropdown.choices) == 11 and dropdown.value == "0"


def slider_values(demo, label):
    return [b.value for b in demo.blocks.values() if getattr(b, "label", None) == label]


def test_demo_sliders_start_at_the_models_own_sampling_defaults(fashion_pipe, pipe, monkeypatch, tmp_path):
    """Both tabs open on the settings the model was measured with, not the ImageNet reference's."""
    pytest.importorskip("gradio", reason="gradio is the optional extra var_hf[demo]")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    from var_hf.demo.app import build_demo

    stored = fashion_pipe.sampling_defaults
    assert stored["guidance_scale"] != 4.0 and stored["top_k"] != 900  # the bundled model has its own
    demo = build_demo(fashion_pipe)
    assert slider_values(demo, "Guidance scale") == [stored["guidance_scale"]] * 2
    assert slider_values(demo, "Top-k") == [stored["top_k"]] * 2
    assert slider_values(demo, "Top-p") == [stored["top_p"]] * 2
    # a pipeline without stored defaults starts at the reference's, top-k capped at its vocabulary
    tiny = build_demo(pipe)
    assert slider_values(tiny, "Guidance scale") == [4.0] * 2
    assert slider_values(tiny, "Top-k") == [min(900, pipe.transformer.config.vocab_size)] * 2


# ------------------------------------------------------------------ the Space app


def test_space_app_is_written_validated_and_builds_the_demo(tmp_path, monkeypatch):
    folder = tmp_path / "space"
    paths = write_space_app(str(folder), "someone/var-fashion", requirement="var_hf[demo] @ git+https://example.org/var_hf@v0.1.0")
    assert sorted(os.path.basename(p) for p in paths) == ["README.md", "app.py", "requirements.txt"]
    info = validate_space_app(str(folder))
    assert info["model_id"] == "someone/var-fashion" and "demo" in info["requirement"]
    assert (folder / "requirements.txt").read_text().splitlines()[0].startswith("var_hf[demo] @ git+")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\n") and "sdk: gradio" in card and "app_file: app.py" in card

    # The app itself runs: pointed at the bundled model (no network), it builds the page without serving it.
    pytest.importorskip("gradio", reason="gradio is the optional extra var_hf[demo]")
    monkeypatch.setenv(MODEL_ENV, DEFAULT_MODEL)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    namespace = runpy.run_path(str(folder / "app.py"), run_name="space_app_check")
    import gradio as gr

    assert isinstance(namespace["demo"], gr.Blocks)


def test_space_app_never_overwrites_without_asking(tmp_path):
    write_space_app(str(tmp_path), "someone/var-fashion")
    (tmp_path / "app.py").write_text("# my own app\n")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_space_app(str(tmp_path), "someone/var-fashion")
    assert (tmp_path / "app.py").read_text() == "# my own app\n"
    write_space_app(str(tmp_path), "someone/other", overwrite=True)
    assert validate_space_app(str(tmp_path))["model_id"] == "someone/other"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model_id="not a repo"), "owner/name"),
        (dict(model_id="owner/bad name"), "not a valid Hub repo id"),
        (dict(model_id="o/m", requirement="gradio"), "must install var_hf"),
        (dict(model_id="o/m", requirement="var_hf[demo] >>= 1"), "not a valid pip requirement"),
    ],
)
def test_write_space_app_rejects_bad_arguments_before_writing(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_space_app(str(tmp_path), **kwargs)
    assert os.listdir(tmp_path) == []


def test_validate_space_app_names_the_broken_file(tmp_path):
    write_space_app(str(tmp_path), "someone/var-fashion")
    (tmp_path / "requirements.txt").write_text("var_hf\n")
    with pytest.raises(ValueError, match="requirements.txt must install var_hf with the demo extra"):
        validate_space_app(str(tmp_path))
    write_space_app(str(tmp_path), "someone/var-fashion", overwrite=True)
    (tmp_path / "app.py").write_text("import gradio as gr\n")
    with pytest.raises(ValueError, match="does not serve var_hf.demo"):
        validate_space_app(str(tmp_path))
    os.remove(tmp_path / "README.md")
    with pytest.raises(ValueError, match="README.md missing"):
        validate_space_app(str(tmp_path))


# ------------------------------------------------------------------ var-hf demo


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--port", "0"], "--port must lie in 1..65535"),
        (["--port", "70000"], "--port must lie in 1..65535"),
        (["--max-images", "0"], "--max-images must be >= 1"),
        (["--share", "maybe"], "invalid choice"),
        (["--num-threads", "0"], "--num-threads must be >= 1"),
    ],
)
def test_demo_command_rejects_bad_arguments_before_loading(argv, match):
    from var_hf.commands.demo import main

    with pytest.raises(UsageError, match=match):
        main(argv)


def test_demo_command_rejects_a_file_as_model(tmp_path):
    from var_hf.commands.demo import build_parser, main

    path = tmp_path / "weights.bin"
    path.write_bytes(b"")
    with pytest.raises(UsageError, match="is a file"):
        main(["--model", str(path)])
    args = build_parser().parse_args(["--share", "--host", "0.0.0.0"])
    assert args.share == "yes" and args.host == "0.0.0.0" and args.port == 7860
    assert build_parser().parse_args([]).share == "no"
