"""The Gradio web demo of next-scale prediction (`var-hf demo`, `pip install "var_hf[demo]"`) and its Space app.

Gradio itself is imported only when a page is built, so this package imports without the extra installed.
"""

from .app import (
    DemoError,
    build_demo,
    class_choices,
    launch_demo,
    load_pipeline,
    mask_from_editor,
    prepare_gradio_environment,
    run_edit,
    run_generate,
    sampling_kwargs,
    serve,
)
from .space import validate_space_app, write_space_app

__all__ = [
    "DemoError",
    "build_demo",
    "class_choices",
    "launch_demo",
    "load_pipeline",
    "mask_from_editor",
    "prepare_gradio_environment",
    "run_edit",
    "run_generate",
    "sampling_kwargs",
    "serve",
    "validate_space_app",
    "write_space_app",
]
