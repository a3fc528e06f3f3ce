"""Loading a VAR pipeline the ways diffusers users load pipelines, each in a fresh Python process that has not
imported var_hf: diffusers' generic `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` (the saved
`pipeline.py` names var_hf's class, as Hub community pipelines do), `custom_pipeline=<pipelines/pipeline_var.py>`
(the pipeline file read on its own), and `VARPipeline.from_pretrained(folder)`, which needs no remote code. Plus the
recommended sampling defaults saved with the pipeline."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import var_hf
from var_hf import VARPipeline
from test_pipeline_var import gen, make_pipeline

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE_FILE = os.path.join(REPO_ROOT, "pipelines", "pipeline_var.py")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pipe = make_pipeline(num_classes=5, id2label={0: "cat", 1: "dog", 2: "car", 3: "tree", 4: "boat"})
    folder = tmp_path_factory.mktemp("saved") / "pipe"
    pipe.save_pretrained(folder)
    expected = pipe(class_labels=[1, 3], generator=gen(0), output_type="np").images
    return folder, expected


def run_fresh(code: str, tmp_path) -> str:
    """Run `code` in a new interpreter (var_hf not imported) with diffusers' module cache in tmp_path; one thread,
    as in this process (conftest), so convolutions round the same way."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    script = "import sys, torch\ntorch.set_num_threads(1)\n" + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


SAMPLE = """
import numpy as np, torch
assert "var_hf" in sys.modules  # imported by the loader, not before
assert type(pipe).__name__ == "VARPipeline", type(pipe)
pipe.set_progress_bar_config(disable=True)
images = pipe(class_labels=[1, 3], generator=torch.Generator().manual_seed(0), output_type="np").images
np.save(sys.argv[1] if len(sys.argv) > 1 else OUT, images)
"""


def load_and_sample(loader: str, tmp_path) -> np.ndarray:
    out = tmp_path / "images.npy"
    run_fresh(f"OUT = {str(out)!r}\nassert 'var_hf' not in sys.modules\n{loader}\n{SAMPLE}", tmp_path)
    return np.load(out)


def test_save_pretrained_writes_the_generic_loader_files(saved):
    folder, _ = saved
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "VARPipeline"]
    assert "from var_hf.pipelines.pipeline_var import VARPipeline" in (folder / "pipeline.py").read_text()


def test_diffusion_pipeline_loads_a_saved_folder_with_trust_remote_code(saved, tmp_path):
    folder, expected = saved
    loader = f"""
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
"""
    np.testing.assert_array_equal(load_and_sample(loader, tmp_path), expected)


def test_diffusion_pipeline_without_trust_remote_code_says_what_to_pass(saved, tmp_path):
    folder, _ = saved
    code = f"""
from diffusers import DiffusionPipeline
try:
    DiffusionPipeline.from_pretrained({str(folder)!r})
except ValueError as err:
    assert "trust_remote_code" in str(err), err
else:
    raise AssertionError("loaded custom code without trust_remote_code")
"""
    run_fresh(code, tmp_path)


def test_custom_pipeline_file_is_read_on_its_own(saved, tmp_path):
    """The checkout's pipelines/pipeline_var.py as diffusers' `custom_pipeline`: it imports var_hf absolutely, so
    diffusers can copy and import it alone (relative imports would look for siblings beside the copy)."""
    folder, expected = saved
    loader = f"""
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, custom_pipeline={PIPELINE_FILE!r}, trust_remote_code=True)
"""
    np.testing.assert_array_equal(load_and_sample(loader, tmp_path), expected)


def test_var_pipeline_loads_without_remote_code_in_a_fresh_process(saved, tmp_path):
    folder, expected = saved
    loader = f"""
from var_hf import VARPipeline
pipe = VARPipeline.from_pretrained({str(folder)!r})
"""
    np.testing.assert_array_equal(load_and_sample(loader, tmp_path), expected)


def test_the_bundled_model_loads_generically_once_it_ships_pipeline_py(tmp_path):
    """DEFAULT_MODEL laid out as save_pretrained writes it (pipeline.py and the list `_class_name`)."""
    folder = tmp_path / "default_model"
    shutil.copytree(var_hf.DEFAULT_MODEL, folder)
    from var_hf.pipeline_loading import GENERIC_LOADER_SOURCE

    (folder / "pipeline.py").write_text(GENERIC_LOADER_SOURCE)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "VARPipeline"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    pipe = VARPipeline.from_pretrained(folder)  # no trust_remote_code for our own class
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(class_labels=[1, 3], generator=gen(0), output_type="np").images
    loader = f"""
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained({str(folder)!r}, trust_remote_code=True)
"""
    np.testing.assert_array_equal(load_and_sample(loader, tmp_path), expected)


# ------------------------------------------------------------------ recommended sampling defaults


def test_sampling_defaults_are_saved_and_used_when_no_setting_is_given(tmp_path):
    defaults = {"guidance_scale": 1.5, "top_k": 5, "top_p": 0.8, "temperature": 0.9, "more_smooth": False}
    pipe = make_pipeline(num_classes=5)
    pipe = VARPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, scheduler=pipe.scheduler,
                       sampling_defaults=defaults)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["sampling_defaults"] == defaults
    loaded = VARPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.sampling_defaults == defaults
    implicit = loaded(class_labels=[0, 2], generator=gen(1), output_type="latent")
    explicit = loaded(class_labels=[0, 2], generator=gen(1), output_type="latent", **defaults)
    reference = loaded(class_labels=[0, 2], generator=gen(1), output_type="latent", guidance_scale=4.0, top_k=900,
                       top_p=0.95, temperature=1.0)
    assert all(torch.equal(a, b) for a, b in zip(implicit.token_maps, explicit.token_maps))
    assert not all(torch.equal(a, b) for a, b in zip(implicit.token_maps, reference.token_maps))
    # One setting given: the others stay the saved ones.
    one = loaded(class_labels=[0, 2], generator=gen(1), output_type="latent", top_k=3)
    one_explicit = loaded(class_labels=[0, 2], generator=gen(1), output_type="latent", **{**defaults, "top_k": 3})
    assert all(torch.equal(a, b) for a, b in zip(one.token_maps, one_explicit.token_maps))


def test_a_per_scale_temperature_default_round_trips_and_is_checked_against_the_schedule(tmp_path):
    pipe = make_pipeline(num_classes=5)
    num_scales = len(pipe.scheduler.config.patch_nums)
    per_scale = [1.5] + [1.0] * (num_scales - 1)
    saved = VARPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, scheduler=pipe.scheduler,
                        sampling_defaults={"temperature": per_scale})
    saved.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["sampling_defaults"]["temperature"] == per_scale
    loaded = VARPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.sampling_defaults["temperature"] == per_scale
    implicit = loaded(class_labels=[0, 2], generator=gen(1), output_type="latent")
    explicit = loaded(class_labels=[0, 2], generator=gen(1), output_type="latent", temperature=per_scale)
    assert all(torch.equal(a, b) for a, b in zip(implicit.token_maps, explicit.token_maps))
    with pytest.raises(ValueError, match=f"temperature has {num_scales - 1} values"):
        VARPipeline(vqvae=pipe.vqvae, transformer=pipe.transformer, scheduler=pipe.scheduler,
                    sampling_defaults={"temperature": per_scale[1:]})


def test_a_pipeline_saved_without_defaults_gets_the_references():
    pipe = make_pipeline(num_classes=5)
    assert pipe.sampling_defaults == {"guidance_scale": 4.0, "top_k": 900, "top_p": 0.95, "temperature": 1.0,
                                      "more_smooth": False}


def test_pipeline_files_import_the_package_absolutely():
    """Relative imports (`from ..x`) would resolve against the checkout's root or diffusers' module cache, not var_hf;
    and the scheduler has one home, `var_hf.scheduling_var`."""
    import ast

    import var_hf.pipelines

    folder = os.path.join(REPO_ROOT, "pipelines")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
            relative = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level > 0]
            assert not relative, f"pipelines/{name} imports relatively at lines {relative}"
    assert not hasattr(var_hf.pipelines, "VARScaleScheduler")
