"""The `>>>` examples in public docstrings run and print what they show (they are the first code users copy)."""

import doctest
import importlib

import pytest

MODULES = [
    "var_hf.configuration_var",
    "var_hf.configuration_vqvae",
    "var_hf.modeling_var",
    "var_hf.modeling_vqvae",
    "var_hf.scheduling_var",
    "var_hf.fast_sampling",
    "var_hf.data",
    "var_hf.metrics",
    "var_hf.evaluation",
    "var_hf.hub",
    "var_hf.pipelines.pipeline_var",
    "var_hf.conversion.convert_var_to_hf",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {module_name} failed (see stdout)"


def test_the_public_classes_have_examples():
    import var_hf

    finder = doctest.DocTestFinder()
    from var_hf.fast_sampling import StaticScaleRunner

    public = {name: getattr(var_hf, name) for name in (
        "VARPipeline", "VARTransformer", "MultiScaleVQVAE", "VARTransformerConfig", "MultiScaleVQVAEConfig",
        "VARScaleScheduler",
    )}
    public["StaticScaleRunner"] = StaticScaleRunner
    for name, obj in public.items():
        tests = finder.find(obj, name)
        assert any(t.examples for t in tests), f"{name} has no runnable docstring example"
