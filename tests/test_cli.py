"""The command line: one convention for every command (spellings, errors, exit codes, fast help) and what `var-hf
generate` leaves on disk.

Commands run in-process through their `main(argv)` on a tiny saved pipeline; `--help` timing and imports are checked
in fresh subprocesses.
"""

import argparse
import importlib
import os
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
import torch

from var_hf import commands
from var_hf.commands import CLIArgumentParser, UsageError, run_command, var_hf_cli
from var_hf.commands.generate import main as generate_main

HEAVY_MODULES = ("torch", "transformers", "diffusers")


# ----------------------------------------------------------------------------------------------------------------------
# Every command's parser
# ----------------------------------------------------------------------------------------------------------------------


class _Captured(BaseException):
    pass


def command_parser(name, monkeypatch):
    """The parser a command builds in its `main`, captured when it starts parsing `--help`."""
    module = importlib.import_module(var_hf_cli.COMMANDS[name][0])
    original = argparse.ArgumentParser.parse_known_args

    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    try:
        module.main(["--help"], prog=f"var-hf {name}")
    except _Captured as captured:
        return captured.args[0]
    finally:
        monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", original)
    raise AssertionError(f"var-hf {name} did not parse its arguments with argparse")


def _value_for(action):
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(list(action.choices)[0])]
    return ["1"]


def _required_argv(parser):
    argv = []
    for action in parser._actions:
        if not action.option_strings and action.dest != "help":
            argv += _value_for(action)
        elif action.required:
            argv += [action.option_strings[0], *_value_for(action)]
    return argv


@pytest.mark.parametrize("name", list(var_hf_cli.COMMANDS))
def test_every_option_takes_both_spellings_and_help_shows_hyphens(name, monkeypatch):
    parser = command_parser(name, monkeypatch)
    base = _required_argv(parser)
    options = [a for a in parser._actions if a.option_strings and a.dest != "help" and not a.required]
    assert options, f"var-hf {name} has no options?"
    for action in options:
        longs = [o for o in action.option_strings if o.startswith("--")]
        shown = longs[0]  # the spelling help lists first
        assert "_" not in shown, f"var-hf {name}: help shows {shown}; show the --x-y spelling first"
        if "-" not in shown[2:]:
            continue
        underscored = "--" + shown[2:].replace("-", "_")
        value = _value_for(action)
        hyphen_ns = parser.parse_known_args(base + [shown, *value])
        underscore_ns = parser.parse_known_args(base + [underscored, *value])
        assert hyphen_ns == underscore_ns, f"var-hf {name}: {underscored} is not read as {shown}"


@pytest.mark.parametrize("name", list(var_hf_cli.COMMANDS))
def test_no_command_takes_an_abbreviated_option(name, monkeypatch):
    parser = command_parser(name, monkeypatch)
    base = _required_argv(parser)
    longs = [(o, a) for a in parser._actions if a.dest != "help" for o in a.option_strings
             if o.startswith("--") and len(o) > 5]
    option, action = max(longs, key=lambda pair: len(pair[0]))
    abbreviated = option[:-2]
    assert abbreviated not in {o for o, _ in longs}
    with pytest.raises(UsageError, match="unrecognized"):  # with abbreviations it would be read as `option`
        parser.parse_args(base + [abbreviated, *_value_for(action)])


def test_help_is_fast_and_imports_nothing_heavy():
    code = (
        "import sys, time; t = time.perf_counter(); from var_hf.commands import var_hf_cli; "
        "import contextlib, io\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    var_hf_cli.main(['--help'])\n"
        "    for name in ('generate', 'push', 'convert'):\n"
        "        var_hf_cli.main([name, '--help'])\n"
        f"print(time.perf_counter() - t, [m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    seconds, heavy = out.split(" ", 1)
    assert heavy.strip() == "[]", f"--help imported {heavy}"
    assert float(seconds) < 1.5

    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "var_hf.commands.var_hf_cli", "--help"], capture_output=True, check=True,
                   timeout=60)
    assert time.perf_counter() - started < 1.5


# ----------------------------------------------------------------------------------------------------------------------
# Errors: one line, 2 for usage and 1 for failures, a traceback only on request
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, code",
    [(UsageError("bad flag"), 2), (ValueError("bad value"), 1), (OSError("disk full"), 1), (KeyError("k"), 1)],
)
def test_run_command_turns_errors_into_one_line(error, code, capsys, monkeypatch):
    def fail(argv):
        raise error

    monkeypatch.delenv("VAR_HF_DEBUG", raising=False)
    assert run_command("var-hf x", fail, []) == code
    err = capsys.readouterr().err
    assert err.startswith("var-hf x: error: ") and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(type(error)):
        run_command("var-hf x", fail, ["--debug"])
    monkeypatch.setenv("VAR_HF_DEBUG", "1")
    with pytest.raises(type(error)):
        run_command("var-hf x", fail, [])


def test_parser_errors_are_one_line():
    parser = CLIArgumentParser(prog="var-hf x")
    parser.add_argument("--top-k", type=int)
    with pytest.raises(UsageError, match=r"--top-k.*'many'.*see var-hf x --help"):
        parser.parse_args(["--top_k", "many"])
    with pytest.raises(UsageError, match="unrecognized"):
        parser.parse_args(["--top", "3"])  # no abbreviations


def test_any_parser_can_raise_usage_errors():
    from transformers import HfArgumentParser

    from var_hf.commands import raise_usage_errors

    parser = raise_usage_errors(HfArgumentParser([], prog="var-hf x"))
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        parser.parse_args(["--bogus"])


def test_unknown_command(capsys):
    assert var_hf_cli.main(["generat"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'generat'" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------------------------
# var-hf generate
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tiny_pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "model"
    tiny_pipeline.save_pretrained(str(folder))
    return folder


def generate(model_dir, out, *flags):
    return generate_main(["--model", str(model_dir), "--out", str(out), *map(str, flags)])


def pngs(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".png")


def test_generate_uses_the_pipeline_defaults_and_lays_the_grid_one_row_per_label(tiny_pipeline, model_dir, tmp_path):
    out = tmp_path / "out"
    assert generate(model_dir, out, "--label", 1, "--label", 3, "--label", "none", "--num-images-per-label", 2,
                    "--seed", 5) == 0
    files = pngs(out)
    assert files[-1] == "grid.png" and len(files) == 7
    # No sampling flag: the pipeline's own defaults, the same images as a direct call with one generator.
    expected = tiny_pipeline(class_labels=[1, 1, 3, 3, None, None], generator=torch.Generator().manual_seed(5),
                             output_type="np").images
    images = [np.asarray(PIL.Image.open(out / f)) for f in files[:-1]]
    np.testing.assert_array_equal(np.stack(images), (expected * 255).round().astype(np.uint8))
    grid = np.asarray(PIL.Image.open(out / "grid.png"))
    side = images[0].shape[0]
    assert grid.shape[:2] == (3 * side, 2 * side)  # 3 labels -> 3 rows, 2 images per label -> 2 columns
    for n, image in enumerate(images):
        row, col = divmod(n, 2)
        np.testing.assert_array_equal(grid[row * side : (row + 1) * side, col * side : (col + 1) * side], image)


def test_generated_files_respect_the_umask(model_dir, tmp_path):
    previous = os.umask(0o022)
    try:
        assert generate(model_dir, tmp_path / "out", "--label", 0) == 0
    finally:
        os.umask(previous)
    for path in (tmp_path / "out").iterdir():
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_out_folder_is_never_mixed(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert generate(model_dir, out, "--label", 0, "--label", 1, "--num-images-per-label", 2) == 0
    first = {f: (out / f).read_bytes() for f in pngs(out)}
    capsys.readouterr()
    # Without --overwrite: refused before any work, nothing changed.
    assert generate(model_dir, out, "--label", 2) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and err.count("\n") == 1
    assert {f: (out / f).read_bytes() for f in pngs(out)} == first
    # With --overwrite: only the new run's files remain.
    assert generate(model_dir, out, "--label", 2, "--overwrite") == 0
    assert pngs(out) == ["0000_2_2.png", "grid.png"]
    # A file generate did not write is never removed, even with --overwrite.
    (out / "notes.txt").write_text("mine")
    assert generate(model_dir, out, "--label", 1, "--overwrite") == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"
    assert pngs(out) == ["0000_2_2.png", "grid.png"]


def test_model_may_be_a_training_output_folder(model_dir, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copytree(model_dir, run_dir / "pipeline")
    assert generate(run_dir, tmp_path / "a", "--label", 0) == 0
    assert "run/pipeline" in capsys.readouterr().err

    nested = tmp_path / "nested"
    shutil.copytree(model_dir, nested / "exports" / "best")
    assert generate(nested, tmp_path / "b", "--label", 0) == 2
    err = capsys.readouterr().err
    assert "exports/best" in err and "--model" in err
    (tmp_path / "empty").mkdir()
    assert generate(tmp_path / "empty", tmp_path / "c", "--label", 0) == 2
    assert "model_index.json" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in ("b", "c"))


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--label", "no-such-class"], "no-such-class"),
        (["--label", 99], "99"),
        (["--top-k", "many"], "--top-k"),
        (["--guidance-scale", "nan"], "guidance_scale"),
        (["--num-images-per-label", 0], "--num-images-per-label"),
        (["--random-labels", 2, "--label", 1], "--random-labels"),
        (["--dtype", "float8"], "--dtype"),
    ],
)
def test_generate_bad_input(model_dir, tmp_path, capsys, flags, needle):
    assert generate(model_dir, tmp_path / "out", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("var-hf generate: error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device, dtype, native, warns", [
    ("cpu", "bfloat16", False, True), ("cpu", "float16", False, True), ("cpu", "bfloat16", True, False),
    ("cpu", "float32", False, False), ("cuda", "bfloat16", False, False), ("cuda:0", "float16", False, False),
])
def test_a_dtype_the_cpu_emulates_is_named_with_its_fix(monkeypatch, device, dtype, native, warns):
    import var_hf.file_utils

    monkeypatch.setattr(var_hf.file_utils, "cpu_computes_natively", lambda precision: native)  # the hardware probe
    message = commands.emulated_dtype_warning(device, dtype)
    assert (message is not None) == warns
    if warns:
        assert message.startswith(f"warning: --dtype {dtype} on a CPU without native {dtype}")
        assert "Leave out --dtype" in message


def test_generate_in_bfloat16_on_this_cpu_warns_iff_emulated_and_still_samples(model_dir, tmp_path, capsys):
    from var_hf.file_utils import cpu_computes_natively

    assert generate(model_dir, tmp_path / "out", "--label", 0, "--dtype", "bfloat16", "--device", "cpu") == 0
    err = capsys.readouterr().err
    assert ("--dtype bfloat16 on a CPU without native bfloat16" in err) == (not cpu_computes_natively("bfloat16"))
    assert len(pngs(tmp_path / "out")) == 2  # the image and the grid


def test_evaluate_in_bfloat16_on_this_cpu_warns_iff_emulated_before_sampling(model_dir, tmp_path, capsys):
    from var_hf.commands.evaluate import main as evaluate_main
    from var_hf.file_utils import cpu_computes_natively

    out = tmp_path / "eval"
    assert evaluate_main(["--model", str(model_dir), "--output-dir", str(out), "--no-metrics", "--num-per-class", "1",
                          "--dtype", "bfloat16", "--device", "cpu", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert ("--dtype bfloat16 on a CPU without native bfloat16" in err) == (not cpu_computes_natively("bfloat16"))
    assert any(name.endswith(".npz") for name in os.listdir(out))


def test_out_under_a_file(model_dir, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert generate(model_dir, tmp_path / "f" / "out", "--label", 0) == 2
    assert "is a file" in capsys.readouterr().err
    assert generate(model_dir, tmp_path / "f", "--label", 0) == 2
    assert "not a folder" in capsys.readouterr().err


def test_scale_strip_is_written_beside_each_image_and_changes_nothing(tiny_pipeline, model_dir, tmp_path):
    from var_hf.scale_strip import ScaleStripRecorder, scale_labels

    assert generate(model_dir, tmp_path / "plain", "--label", 1, "--label", 2, "--seed", 3) == 0
    assert generate(model_dir, tmp_path / "strips", "--label", 1, "--label", 2, "--seed", 3, "--scale-strip") == 0
    images = pngs(tmp_path / "plain")
    assert pngs(tmp_path / "strips") == sorted(images + [f[:-4] + "_scales.png" for f in images if f != "grid.png"])
    for name in images:  # the strips do not change the samples
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "strips" / name).read_bytes()
    recorder = ScaleStripRecorder()
    tiny_pipeline(class_labels=[1, 2], generator=torch.Generator().manual_seed(3), callback_on_step_end=recorder,
                  callback_on_step_end_tensor_inputs=recorder.tensor_inputs)
    expected = recorder.strips(labels=scale_labels(tiny_pipeline.scheduler.config.patch_nums))
    for strip, name in zip(expected, [f for f in images if f != "grid.png"]):
        written = PIL.Image.open(tmp_path / "strips" / (name[:-4] + "_scales.png"))
        np.testing.assert_array_equal(np.asarray(written), np.asarray(strip.convert(written.mode)))


def test_library_chatter_is_off_unless_verbose(model_dir, tmp_path):
    import transformers

    try:
        assert generate(model_dir, tmp_path / "quiet", "--label", 0) == 0
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert transformers.utils.logging.get_verbosity() == transformers.logging.WARNING
        assert generate(model_dir, tmp_path / "loud", "--label", 0, "--verbose") == 0
        assert transformers.utils.logging.is_progress_bar_enabled()
        assert transformers.utils.logging.get_verbosity() == transformers.logging.INFO
    finally:
        transformers.utils.logging.set_verbosity_warning()
        transformers.utils.logging.enable_progress_bar()
