"""Docs that stay true: every command line in README.md and docs/*.md is parsed by the real parser of the command it
runs, so a renamed or removed flag fails here.

Commands are taken from fenced `bash`/`sh`/`shell`/`console` blocks: backslash continuations joined, `#` comments, `$ `
prompts, `VAR=value` prefixes and redirections dropped, `&&`/`;`/`|` chains split. `var-hf ...`, `var-hf-convert ...`,
`python -m var_hf...`, `python path/to/script.py` and `accelerate launch [accelerate flags] script-or-module ...` are
checked; accelerate's own flags go through accelerate's own parser. `...` stands for "more options": it is skipped,
and only there may required options be missing.

Each command module is run through its `main(argv)` up to the end of argument parsing: argparse's `parse_known_args`
is wrapped so that, once the parser (whichever class builds it) has accepted the arguments, parsing stops with
`ArgumentsAccepted` before the command does any work.
"""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from var_hf.commands import var_hf_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(bash|sh|shell|console)[^\n]*\n(.*?)^```", re.S | re.M)
CHAIN = {"&&", "||", ";", "|", "&"}
REDIRECT = re.compile(r"^\d*(>>?|<)(&\d+)?")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def extract_commands(text: str):
    """(line number, argv) for every command of every shell block in `text`."""
    for block in FENCE.finditer(text):
        first_line = text[: block.start(2)].count("\n") + 1
        lines = block.group(2).split("\n")
        joined, start = "", None
        for offset, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:]
            if start is None:
                start = first_line + offset
            if stripped.endswith("\\"):
                joined += stripped[:-1] + " "
                continue
            joined += stripped
            if joined.strip():
                yield from ((start, argv) for argv in _split_chain(joined))
            joined, start = "", None


def _split_chain(line: str):
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # unbalanced quotes in prose-like lines
        return
    current = []
    for token in [*tokens, ";"]:
        if token in CHAIN or token.endswith(";"):
            if token.endswith(";") and token != ";":
                current.append(token[:-1])
            argv = _clean(current)
            if argv:
                yield argv
            current = []
        else:
            current.append(token)


def _clean(tokens):
    while tokens and ENV_ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    for i, token in enumerate(tokens):
        if REDIRECT.match(token):
            tokens = tokens[:i]
            break
    return tokens


class ArgumentsAccepted(BaseException):
    """Raised right after a parser accepted the arguments (a BaseException, so `run_command` lets it through)."""


@pytest.fixture
def stop_after_parsing(monkeypatch):
    """Call it to make every argparse parser stop with `ArgumentsAccepted` once it has accepted its arguments."""
    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = original(self, args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise ArgumentsAccepted(namespace)

    return lambda: monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)


def command_module_for(target: str, is_module: bool):
    """The `var_hf.commands` module run by a script path or a `-m` module: its own `main`, or the command its
    `__main__` block calls."""
    if not is_module:
        path = Path(target)
        parts = path.with_suffix("").parts
        if parts[:2] == ("src", "var_hf"):
            target = ".".join(parts[1:])
        elif parts[0] in ("pipelines", "conversion"):
            target = "var_hf." + ".".join(parts)
        else:
            return None  # a script outside the package (benchmarks/): not a var_hf command
    if not target.startswith("var_hf"):
        return None
    module = importlib.import_module(target)
    if target.startswith("var_hf.commands."):
        return module
    source = Path(module.__file__).read_text(encoding="utf-8")
    match = re.search(r"from (var_hf\.commands\.\w+) import main", source)
    assert match, f"{target} does not run a var_hf.commands module"
    return importlib.import_module(match.group(1))


def resolve(argv):
    """(command module or None for the dispatcher, prog, arguments) of a documented command, or "skip"."""
    argv = [t for t in argv if t != "..."]
    head = argv[0]
    if head == "var-hf":
        if len(argv) < 2 or argv[1].startswith("-"):
            return None, "var-hf", argv[1:]
        assert argv[1] in var_hf_cli.COMMANDS, f"unknown var-hf command {argv[1]!r}"
        return importlib.import_module(var_hf_cli.COMMANDS[argv[1]][0]), f"var-hf {argv[1]}", argv[2:]
    if head == "var-hf-convert":
        return importlib.import_module("var_hf.commands.convert"), "var-hf-convert", argv[1:]
    if head in ("python", "python3") and len(argv) > 1:
        if argv[1] == "-m" and argv[2].startswith("var_hf"):
            module = command_module_for(argv[2], True)
            return (module, argv[2], argv[3:]) if module else "skip"
        if argv[1].endswith(".py"):
            module = command_module_for(argv[1], False)
            return (module, argv[1], argv[2:]) if module else "skip"
        return "skip"
    if head == "accelerate" and len(argv) > 1 and argv[1] == "launch":
        from accelerate.commands.launch import launch_command_parser

        launch = launch_command_parser().parse_args(argv[2:])  # accelerate's own flags, by accelerate's parser
        script = launch.training_script
        module = command_module_for(script, bool(launch.module))
        return (module, script, list(launch.training_script_args)) if module else "skip"
    return "skip"


DOCUMENTED = [
    pytest.param(argv, id=f"{path.name}:{line}")
    for path in DOC_FILES
    for line, argv in extract_commands(path.read_text(encoding="utf-8"))
    if argv[0] in ("var-hf", "var-hf-convert", "accelerate", "python", "python3")
]


def test_the_docs_hold_commands():
    """The extraction itself works: README's two commands and the conversion page's are found."""
    found = [" ".join(p.values[0]) for p in DOCUMENTED]
    assert any(c.startswith("var-hf generate") for c in found) and any(c.startswith("var-hf-convert") for c in found)
    assert len(found) >= 8, found


@pytest.mark.parametrize("argv", DOCUMENTED)
def test_documented_command_parses(argv, stop_after_parsing, capsys):
    resolved = resolve(argv)
    if resolved == "skip":
        pytest.skip(f"not a var_hf command: {' '.join(argv)}")
    module, prog, args = resolved
    stop_after_parsing()
    try:
        code = var_hf_cli.main(args) if module is None else module.main(args, prog=prog)
    except ArgumentsAccepted:
        return
    except SystemExit as exit_:  # parsers that exit on errors (HfArgumentParser) when no run_command wraps them
        code = exit_.code
    err = capsys.readouterr().err
    if "..." in argv and "the following arguments are required" in err:
        return  # `...` stands for the options the page leaves out; every flag that is shown was accepted
    assert code == 0 and ("--help" in args or "-h" in args or module is None), (
        f"`{' '.join(argv)}` is not accepted by {prog}: {err.strip()}"
    )


def test_extraction_handles_continuations_env_and_chains():
    text = (
        "```bash\n"
        "OMP_NUM_THREADS=1 accelerate launch --cpu -m var_hf.training.train_var \\\n"
        "    --output-dir runs/x   # a comment\n"
        "$ var-hf generate --seed 1 > log.txt 2>&1 && var-hf push a b/c ; ls\n"
        "```\n"
        "```python\nvar-hf not-a-shell-block\n```\n"
    )
    assert list(extract_commands(text)) == [
        (2, ["accelerate", "launch", "--cpu", "-m", "var_hf.training.train_var", "--output-dir", "runs/x"]),
        (4, ["var-hf", "generate", "--seed", "1"]),
        (4, ["var-hf", "push", "a", "b/c"]),
        (4, ["ls"]),
    ]


def test_a_renamed_flag_is_caught(stop_after_parsing, capsys):
    module, prog, args = resolve(["var-hf", "generate", "--guidance", "4"])
    stop_after_parsing()
    assert module.main(args, prog=prog) == 2
    assert "--guidance" in capsys.readouterr().err
    with pytest.raises(ArgumentsAccepted):
        module.main(["--guidance_scale", "4"], prog=prog)
