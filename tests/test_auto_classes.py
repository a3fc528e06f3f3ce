"""The models load through transformers' and diffusers' Auto classes, and the package root imports lazily.

Each Auto-class form runs in a fresh Python process that has not imported var_hf (the situation of a user who only
knows the folder), offline, with transformers' and diffusers' module caches in the test's temporary folder.
"""

import json
import os
import subprocess
import sys

import pytest

from var_hf.modeling_utils import AUTO_SHIM_FILE, add_auto_class_files, pipeline_auto_map


def _run(code: str, tmp_path, timeout: int = 300, stderr: bool = False):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "hf_modules"),
        "PYTHONWARNINGS": "ignore",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return (result.stdout, result.stderr) if stderr else result.stdout


# In the child: what was loaded, and proof that var_hf was not imported before the Auto class ran.
LOAD_TEMPLATE = """
import sys
assert "var_hf" not in sys.modules
{imports}
model = {call}
import torch
from safetensors.torch import load_file
weights = load_file({weights!r})
state = model.state_dict()
assert set(weights) == set(state) and all(torch.equal(weights[k], state[k]) for k in weights)
print(type(model).__module__ + "." + type(model).__name__)
"""


@pytest.fixture(scope="module")
def saved_pipeline(tiny_pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("auto") / "pipe"
    tiny_pipeline.save_pretrained(folder)  # nothing added by hand: what every saved pipeline holds
    return folder


def test_save_pretrained_writes_auto_map_and_its_module(saved_pipeline):
    for component, model_class in (("transformer", "VARTransformer"), ("vqvae", "MultiScaleVQVAE")):
        config = json.loads((saved_pipeline / component / "config.json").read_text())
        assert config["auto_map"]["AutoModel"] == f"var_hf_auto.{model_class}"
        source = (saved_pipeline / component / AUTO_SHIM_FILE).read_text()
        assert f"import {model_class}" in source and f"Component = {model_class}" in source
    # At the root: transformers looks for auto_map modules there even with subfolder=, and diffusers' AutoModel
    # with subfolder= reads auto_map from model_index.json.
    index = json.loads((saved_pipeline / "model_index.json").read_text())
    assert index["auto_map"] == pipeline_auto_map()
    root_source = (saved_pipeline / AUTO_SHIM_FILE).read_text()
    assert "import VARTransformer" in root_source and "import MultiScaleVQVAE" in root_source


def test_loading_a_pipeline_ignores_auto_map_without_warnings(saved_pipeline, tmp_path):
    # auto_map is for the Auto classes, not a pipeline argument: no "not expected" warning from any loader.
    code = (
        "import diffusers, var_hf\n"
        "from diffusers.utils import logging\n"
        "logging.set_verbosity_warning()\n"
        f"pipe = var_hf.VARPipeline.from_pretrained({str(saved_pipeline)!r})\n"
        f"generic = diffusers.DiffusionPipeline.from_pretrained({str(saved_pipeline)!r}, trust_remote_code=True)\n"
        "assert 'auto_map' not in pipe.config and 'auto_map' not in generic.config\n"
        "print(type(generic).__name__)\n"
    )
    stdout, stderr = _run(code, tmp_path, stderr=True)
    assert stdout.strip() == "VARPipeline"
    assert "auto_map" not in stderr and "not expected" not in stderr, stderr


FRESH_FORMS = [
    ("transformers", "transformer",
     "import transformers\n"
     "config = transformers.AutoConfig.from_pretrained({root!r}, subfolder='transformer', trust_remote_code=True)\n"
     "assert type(config).__name__ == 'VARTransformerConfig' and config.depth == 2",
     "transformers.AutoModel.from_pretrained({root!r}, subfolder='transformer', trust_remote_code=True)",
     "var_hf.modeling_var.VARTransformer"),
    ("transformers", "vqvae", "import transformers",
     "transformers.AutoModel.from_pretrained({root!r}, subfolder='vqvae', trust_remote_code=True)",
     "var_hf.modeling_vqvae.MultiScaleVQVAE"),
    ("transformers", "transformer", "import transformers",
     "transformers.AutoModel.from_pretrained({root!r} + '/transformer', trust_remote_code=True)",
     "var_hf.modeling_var.VARTransformer"),
    ("diffusers", "vqvae", "import diffusers",
     "diffusers.AutoModel.from_pretrained({root!r}, subfolder='vqvae', trust_remote_code=True)",
     "var_hf.modeling_vqvae.MultiScaleVQVAE"),
    ("diffusers", "transformer", "import diffusers",
     "diffusers.AutoModel.from_pretrained({root!r} + '/transformer', trust_remote_code=True)",
     "var_hf.modeling_var.VARTransformer"),
]


@pytest.mark.parametrize(
    "library, component, imports, call, expected", FRESH_FORMS, ids=[f"{f[0]}-{i}" for i, f in enumerate(FRESH_FORMS)]
)
def test_auto_model_in_a_fresh_process(saved_pipeline, tmp_path, library, component, imports, call, expected):
    code = LOAD_TEMPLATE.format(
        imports=imports.format(root=str(saved_pipeline)), call=call.format(root=str(saved_pipeline)),
        weights=str(saved_pipeline / component / "model.safetensors"),
    )
    assert _run(code, tmp_path).strip().endswith(expected)


def test_importing_a_model_module_registers_it_without_trust_remote_code(saved_pipeline, tmp_path):
    # No import-order dependency: the model module alone registers its Auto classes.
    code = (
        "import var_hf.modeling_vqvae, transformers\n"
        f"model = transformers.AutoModel.from_pretrained({str(saved_pipeline)!r}, subfolder='vqvae')\n"
        "print(type(model).__name__)\n"
    )
    assert _run(code, tmp_path).strip() == "MultiScaleVQVAE"


def test_add_auto_class_files_upgrades_a_folder_saved_before(saved_pipeline, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(saved_pipeline, old)
    for path in [old / AUTO_SHIM_FILE, old / "transformer" / AUTO_SHIM_FILE, old / "vqvae" / AUTO_SHIM_FILE]:
        path.unlink()
    for path in [old / "model_index.json", old / "transformer" / "config.json", old / "vqvae" / "config.json"]:
        data = json.loads(path.read_text())
        data.pop("auto_map")
        path.write_text(json.dumps(data))
    weights_before = (old / "vqvae" / "model.safetensors").read_bytes()
    written = add_auto_class_files(old)
    assert len(written) == 6 and (old / "vqvae" / "model.safetensors").read_bytes() == weights_before
    # The upgraded folder holds what a fresh save holds (the fresh-process loads above then apply to it).
    for name in (AUTO_SHIM_FILE, f"transformer/{AUTO_SHIM_FILE}", f"vqvae/{AUTO_SHIM_FILE}"):
        assert (old / name).read_text() == (saved_pipeline / name).read_text(), name
    for name in ("model_index.json", "transformer/config.json", "vqvae/config.json"):
        assert json.loads((old / name).read_text()) == json.loads((saved_pipeline / name).read_text()), name


def test_the_package_root_imports_lazily(tmp_path):
    code = (
        "import sys, var_hf\n"
        "from var_hf import DEFAULT_MODEL\n"
        "assert var_hf.__version__ and DEFAULT_MODEL\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'var_hf.modeling_var') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        # public names still resolve, in any order
        "from var_hf import VARPipeline, VARScaleScheduler\n"
        "from var_hf import VARTransformer, MultiScaleVQVAEConfig, VARKVCache, PATCH_NUMS_256\n"
        "import var_hf.pipelines\n"
        "assert VARPipeline is var_hf.pipelines.VARPipeline and 'VARTransformer' in dir(var_hf)\n"
        "print('ok')\n"
    )
    assert _run(code, tmp_path).strip() == "ok"


def test_unknown_names_raise_attribute_error():
    import var_hf

    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        var_hf.NotAThing  # noqa: B018
    assert set(var_hf.__all__) <= set(dir(var_hf))
