"""A Hugging Face Space for a pushed VAR pipeline: `app.py`, `requirements.txt` and the Space card (`README.md`).

`write_space_app` writes the three files into a local folder and `validate_space_app` checks them, both without any
network; uploading the folder as a Space repo (`huggingface_hub.create_repo(..., repo_type="space",
space_sdk="gradio")` and `upload_folder`) is the push step's job. The Space installs var_hf with its `demo` extra and
runs `app.py`, which serves `var_hf.demo` on the model repo; Spaces set `GRADIO_SERVER_NAME`/`GRADIO_SERVER_PORT`,
which the demo honours.

Example:

```python
>>> import os, tempfile
>>> from var_hf.demo.space import validate_space_app, write_space_app
>>> folder = tempfile.mkdtemp()
>>> sorted(os.path.basename(p) for p in write_space_app(folder, "my-user/var-fashion-mnist"))
['README.md', 'app.py', 'requirements.txt']
>>> validate_space_app(folder)["model_id"]
'my-user/var-fashion-mnist'

```
"""

import ast
import os
from typing import Dict, List, Optional

from var_hf.file_utils import write_text_atomically

# The Gradio the Space runs (Spaces install `gradio==sdk_version` themselves); inside the `demo` extra's range.
DEFAULT_SDK_VERSION = "6.31.0"
SPACE_FILES = ("app.py", "requirements.txt", "README.md")
MODEL_ENV = "VAR_HF_DEMO_MODEL"

APP_TEMPLATE = '''"""VAR next-scale prediction demo on {model_id}: a Gradio app for Hugging Face Spaces (by var_hf)."""

import os

from var_hf.demo import build_demo, load_pipeline, prepare_gradio_environment, serve

# The model repo to serve; {env} overrides it (e.g. to try the app on a local folder).
MODEL = os.environ.get("{env}", {model_id!r})

temp_dir = prepare_gradio_environment()  # Gradio's file cache in a fresh temporary folder, analytics off
demo = build_demo(load_pipeline(MODEL), title={title!r}, model_name=MODEL)

if __name__ == "__main__":
    serve(demo, temp_dir=temp_dir)
'''

CARD_BODY = """
# {title}

Next-scale prediction with [VAR](https://arxiv.org/abs/2404.02905) on [{model_id}](https://huggingface.co/{model_id}):
pick a class and a seed, press Generate, and watch each image arrive coarse to fine in its scale strip
(one whole token map per step). The Edit tab regenerates a painted region (inpainting, outpainting,
class-conditional editing) without any fine-tuning.

Runs `var_hf.demo` (`pip install "var_hf[demo]"`, then `var-hf demo --model {model_id}` locally).
"""


def default_requirement() -> str:
    """The pip requirement that installs this version of var_hf with the demo extra."""
    from var_hf import __version__

    return f"var_hf[demo]=={__version__}"


def _check_model_id(model_id: str):
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(model_id, str) or model_id.count("/") != 1:
        raise ValueError(f"model_id must be a Hub model repo id 'owner/name' (the pushed pipeline), got {model_id!r}.")
    try:
        validate_repo_id(model_id)
    except HFValidationError as err:
        raise ValueError(f"model_id {model_id!r} is not a valid Hub repo id: {err}") from None


def _check_requirement(line: str):
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        return Requirement(line)
    except InvalidRequirement as err:
        raise ValueError(f"requirements.txt line {line!r} is not a valid pip requirement: {err}") from None


def write_space_app(
    folder: str,
    model_id: str,
    requirement: Optional[str] = None,
    title: Optional[str] = None,
    sdk_version: str = DEFAULT_SDK_VERSION,
    extra_requirements: Optional[List[str]] = None,
    overwrite: bool = False,
) -> List[str]:
    """Write a Gradio Space that serves the VAR demo on `model_id` into `folder`; returns the paths written.

    Args:
        folder (`str`): where to write `app.py`, `requirements.txt` and `README.md` (created if missing).
        model_id (`str`): the Hub model repo the Space loads (`owner/name`, the pushed pipeline).
        requirement (`str`, *optional*): how the Space installs var_hf, a pip requirement line. Defaults to
            `var_hf[demo]==<this version>`; pass e.g. `"var_hf[demo] @ git+https://github.com/<you>/var_hf@v0.1.0"`
            when this version is not on PyPI.
        title (`str`, *optional*): the Space's title; defaults to "VAR: <model name>".
        sdk_version (`str`, *optional*): the Gradio version the Space runs (Spaces install it themselves).
        extra_requirements (`List[str]`, *optional*): more requirement lines (e.g. a CUDA torch for GPU hardware).
        overwrite (`bool`, *optional*, defaults to `False`): replace existing files of the same names; without it an
            existing `app.py`, `requirements.txt` or `README.md` is an error and nothing is written.
    """
    from huggingface_hub import SpaceCard, SpaceCardData

    _check_model_id(model_id)
    requirement = requirement or default_requirement()
    lines = [requirement, *(extra_requirements or [])]
    for line in lines:
        _check_requirement(line)
    if not any(_check_requirement(line).name.replace("-", "_").lower() == "var_hf" for line in lines):
        raise ValueError(f"requirement must install var_hf (with its demo extra), got {requirement!r}.")
    title = title or f"VAR: {model_id.split('/')[-1]}"
    paths = {name: os.path.join(folder, name) for name in SPACE_FILES}
    existing = [path for path in paths.values() if os.path.exists(path)]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist(s); pass overwrite=True to replace the Space files."
        )

    app = APP_TEMPLATE.format(model_id=model_id, title=title, env=MODEL_ENV)
    compile(app, "app.py", "exec")  # a template mistake fails here, not on the Space
    card_data = SpaceCardData(
        title=title[:60], sdk="gradio", sdk_version=sdk_version, app_file="app.py", models=[model_id],
        emoji="🧩", colorFrom="indigo", colorTo="blue", pinned=False,
        short_description="Next-scale prediction, coarse to fine"[:60],
    )
    card = SpaceCard(f"---\n{card_data.to_yaml()}\n---\n{CARD_BODY.format(title=title, model_id=model_id)}")
    os.makedirs(folder, exist_ok=True)
    write_text_atomically(paths["app.py"], app)
    write_text_atomically(paths["requirements.txt"], "\n".join(lines) + "\n")
    write_text_atomically(paths["README.md"], str(card))
    validate_space_app(folder)
    return [paths[name] for name in SPACE_FILES]


def validate_space_app(folder: str) -> Dict[str, str]:
    """Check a Space folder without network: `app.py` parses and serves `var_hf.demo` on a model, `requirements.txt`
    installs var_hf with the demo extra, and `README.md` is a Gradio Space card running `app.py`. Raises `ValueError`
    naming the problem; returns `{"model_id", "requirement", "sdk_version"}`."""
    from huggingface_hub import SpaceCard

    missing = [name for name in SPACE_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise ValueError(
            f"{folder} is not a complete Space app: {', '.join(missing)} missing (write_space_app writes them)."
        )

    with open(os.path.join(folder, "app.py"), encoding="utf-8") as f:
        source = f.read()
    try:
        tree = ast.parse(source, "app.py")
    except SyntaxError as err:
        raise ValueError(f"{folder}/app.py does not parse: {err}") from None
    imported = {alias.name for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module == "var_hf.demo" for alias in node.names}
    if not {"build_demo", "load_pipeline", "serve"} <= imported:
        raise ValueError(
            f"{folder}/app.py does not serve var_hf.demo (it should import build_demo, load_pipeline, serve)."
        )
    model_ids = [node.args[1].value for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)
                 and node.args[0].value == MODEL_ENV and isinstance(node.args[1], ast.Constant)]
    if len(model_ids) != 1:
        raise ValueError(f"{folder}/app.py does not name the model repo (os.environ.get({MODEL_ENV!r}, 'owner/name')).")
    _check_model_id(model_ids[0])

    with open(os.path.join(folder, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
    requirements = [_check_requirement(line) for line in lines]
    var_hf = [r for r in requirements if r.name.replace("-", "_").lower() == "var_hf"]
    if not var_hf or "demo" not in var_hf[0].extras:
        raise ValueError(
            f"{folder}/requirements.txt must install var_hf with the demo extra ('var_hf[demo]...'), got {lines}."
        )

    card = SpaceCard.load(os.path.join(folder, "README.md"))
    data = card.data
    if data.sdk != "gradio" or data.app_file != "app.py" or not data.sdk_version:
        raise ValueError(
            f"{folder}/README.md must declare sdk: gradio, an sdk_version and app_file: app.py; got sdk={data.sdk!r}, "
            f"sdk_version={data.sdk_version!r}, app_file={data.app_file!r}."
        )
    if model_ids[0] not in (data.models or []):
        raise ValueError(f"{folder}/README.md should list the served model {model_ids[0]!r} under models.")
    return {"model_id": model_ids[0], "requirement": str(var_hf[0]), "sdk_version": str(data.sdk_version)}


__all__ = ["DEFAULT_SDK_VERSION", "MODEL_ENV", "default_requirement", "validate_space_app", "write_space_app"]
