"""The `>>>` examples in public docstrings run and print what they show (they are the first code users copy)."""

import doctest
import importlib
import importlib.util
import os

import pytest


def _modules_with_examples():
    """Every module of var_hf (including `var_hf.pipelines` and `var_hf.conversion`, which live outside `src/`) whose
    source holds a `>>>` example, found on disk so that a new or moved module is covered without editing this list.
    Private modules (`_name.py`) and the `evaluate` loading scripts (run by `evaluate.load`, not imported) are left
    out."""
    roots = {"var_hf": importlib.util.find_spec("var_hf").submodule_search_locations[0]}
    for package in ("var_hf.pipelines", "var_hf.conversion"):
        roots[package] = importlib.util.find_spec(package).submodule_search_locations[0]
    found = set()
    for package, root in roots.items():
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = [d for d in subfolders if d not in ("evaluate_modules", "__pycache__", "default_model")]
            relative = os.path.relpath(folder, root)
            prefix = package if relative == "." else ".".join([package, *relative.split(os.sep)])
            if relative != "." and not os.path.isfile(os.path.join(folder, "__init__.py")):
                continue
            for name in files:
                if not name.endswith(".py") or (name.startswith("_") and name != "__init__.py"):
                    continue
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    if ">>> " not in f.read():
                        continue
                found.add(prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}")
    return sorted(found)


MODULES = _modules_with_examples()


def test_the_discovery_finds_the_core_modules():
    for name in ("var_hf.configuration_var", "var_hf.modeling_var", "var_hf.modeling_vqvae", "var_hf.scheduling_var",
                 "var_hf.pipelines.pipeline_var", "var_hf.conversion.convert_var_to_hf",
                 "var_hf.evaluation.metrics", "var_hf.evaluation.protocol", "var_hf.modeling_domain_classifier",
                 "var_hf.configuration_domain_classifier", "var_hf.scale_strip", "var_hf.demo.space"):
        assert name in MODULES, name


@pytest.mark.parametrize("metric_name", ("fid", "inception_score", "precision_recall"))
def test_evaluate_module_examples_run(metric_name):
    """The `evaluate` loading scripts are left out above (not importable); their examples reach users as the metric
    class's docstring (`evaluate`'s `add_start_docstrings`), so they run from there."""
    from var_hf.evaluation.metrics import load_metric

    metric_class = type(load_metric(metric_name))
    test = doctest.DocTestParser().get_doctest(metric_class.__doc__, {}, metric_class.__name__, None, 0)
    assert test.examples, f"the {metric_name} module shows no example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of the {metric_name} module failed"


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
