"""benchmarks/scaling_law.py: the power-law fits, the compute frontier, the parameter count, and a 2-step run of the
whole study on a few Fashion-MNIST images."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from var_hf import MultiScaleVQVAEConfig, VARTransformer

from conftest import make_var_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "scaling_law.py")


def load_script():
    spec = importlib.util.spec_from_file_location("scaling_law", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scaling_law = load_script()


def test_fit_recovers_an_exact_power_law():
    n = np.array([1e4, 3e4, 1e5, 4e5, 1e6])
    for alpha, beta in ((-0.2, 2.5e-3), (-0.05, 7.0), (0.3, 1e-2)):
        fit = scaling_law.fit_power_law(n, (beta * n) ** alpha)
        assert fit["alpha"] == pytest.approx(alpha, rel=1e-9)
        assert fit["beta"] == pytest.approx(beta, rel=1e-6)
        assert fit["r"] == pytest.approx(np.sign(alpha), abs=1e-12)
        assert fit["rms_log10"] < 1e-12
        np.testing.assert_allclose(scaling_law.power_law(fit, n), (beta * n) ** alpha, rtol=1e-9)


def test_fit_reports_scatter_and_tiny_exponents():
    n = np.array([1e4, 3e4, 1e5, 4e5, 1e6])
    noisy = (1e-3 * n) ** -0.2 * np.array([1.0, 1.08, 0.93, 1.05, 0.97])
    fit = scaling_law.fit_power_law(n, noisy)
    assert -0.99 < fit["r"] < -0.5 and fit["rms_log10"] > 0.01
    flat = scaling_law.fit_power_law(n, 5.5 * n ** -0.0005)  # beta = 5.5^(1/alpha) underflows a float
    assert fit["alpha"] < 0 and flat["beta"] is None and flat["log10_beta"] < -300
    assert "N)^-0.0005" in scaling_law.describe_fit(flat)
    json.dumps(flat, allow_nan=False)  # what results.json holds


@pytest.mark.parametrize("x, y", [([1, 2], [1, 2]), ([1, 2, 0], [1, 2, 3]), ([1, 2, 3], [1, float("nan"), 3]),
                                  ([2, 2, 2], [1, 2, 3])])
def test_fit_refuses_bad_points(x, y):
    with pytest.raises(ValueError, match="fit_power_law"):
        scaling_law.fit_power_law(x, y)


def test_compute_frontier():
    points = [(1, 5.0), (2, 4.0), (2, 4.5), (3, 4.2), (4, 3.0), (5, 3.5)]
    assert scaling_law.compute_frontier(points) == [(1, 5.0), (2, 4.0), (4, 3.0)]


def test_non_embedding_parameters_counts_blocks_and_head():
    model = VARTransformer(make_var_config(depth=2, embed_dim=32, num_heads=2))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    n = scaling_law.non_embedding_parameters(shapes)
    kept = sum(p.numel() for name, p in model.named_parameters()
               if name.startswith(("blocks.", "head.", "head_norm.")))
    assert n == kept
    embeddings = sum(p.numel() for m in (model.class_embedding, model.word_embed, model.level_embedding)
                     for p in m.parameters()) + model.pos_start.numel() + model.pos_embedding.numel()
    assert n + embeddings == sum(p.numel() for p in model.parameters())


def test_study_arguments_are_checked(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    for argv, message in ((["--depths", "2,2,3"], "--depths"), (["--max-steps", "0"], "--max-steps"),
                          (["--vqvae", str(tmp_path)], "--vqvae"), ([], "not empty")):
        out_dir = str(tmp_path / "x") if message == "not empty" else str(tmp_path / "new")
        result = subprocess.run([sys.executable, SCRIPT, "--output-dir", out_dir, *argv], capture_output=True, text=True)
        assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="needs Debian's fashion-mnist")
def test_two_step_study_runs_end_to_end(tmp_path):
    out = tmp_path / "study"
    cmd = [sys.executable, SCRIPT, "--output-dir", str(out), "--depths", "1,2,3", "--max-steps", "2",
           "--batch-size", "4", "--checkpoints", "1", "--train-samples", "16", "--test-samples", "8"]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [m["depth"] for m in results["models"]] == [1, 2, 3]
    assert [m["width"] for m in results["models"]] == [16, 32, 48]
    # The same tokens seen by every model: steps x batch x tokens per image of the script's default tokenizer.
    patch_nums = MultiScaleVQVAEConfig.from_pretrained(scaling_law.DEFAULT_VQVAE).patch_nums
    assert all(m["tokens"] == 2 * 4 * sum(p * p for p in patch_nums) for m in results["models"])
    assert results["models"][0]["N"] < results["models"][1]["N"] < results["models"][2]["N"]
    assert set(results["fits"]) >= {"Lm_vs_N", "Lt_vs_N", "Errm_vs_N", "Errt_vs_N"}
    assert (out / "scaling_size.png").stat().st_size > 0 and (out / "scaling_compute.png").stat().st_size > 0
    # Resuming a finished study trains nothing again and gives the same table.
    table = (out / "results.md").read_text()
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert again.returncode == 0 and "trained, kept" in again.stdout and (out / "results.md").read_text() == table
