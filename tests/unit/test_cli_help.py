"""`ffpipe` conventions: help on stdout with exit 0 for every command of the table (a new
command is covered by adding its line), every option with help and its default, one-line
errors with "did you mean", --version, and no torch import for help or a bad option."""

import argparse
import json
import re
import subprocess
import sys
import textwrap

import pytest

from pipeline import __version__
from pipeline.cli import COMMANDS, main
from pipeline.command_line import HELP_WIDTH, command_parser
from pipeline.config import SECTIONS, RunConfig, iter_fields, load_config
from pipeline.errors import UserError
from pipeline.overrides import SHORT_FLAGS, parse_overrides
from pipeline.train_help import cli_value

pytestmark = pytest.mark.timeout(120)

# Commands whose parser lives in a module this branch may not edit; they still need help
# text and shown defaults on some options (see the reason). strict: passing fails, so the
# mark goes when they are fixed.
def run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv", [["--help"], ["-h"]] + [[c, "--help"] for c in COMMANDS])
def test_help_goes_to_stdout_with_exit_0(argv, capsys):
    rc, out, err = run(argv, capsys)
    assert rc == 0 and err == ""
    assert out.startswith("usage: ffpipe"), out[:200]


def parsers_printed(argv, monkeypatch, capsys) -> list[argparse.ArgumentParser]:
    seen = []
    original = argparse.ArgumentParser.print_help

    def spy(self, file=None):
        seen.append(self)
        original(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", spy)
    assert main(argv) == 0
    capsys.readouterr()
    return seen


def option_problems(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    problems = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        if not action.help:
            problems.append(f"{name}: no help")
        elif action.option_strings and "default" not in formatter._expand_help(action):
            problems.append(f"{name}: default not shown")
    return problems


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "train"])
def test_every_option_of_every_command_has_help_and_shows_its_default(command, monkeypatch,
                                                                      capsys):
    parsers = parsers_printed([command, "--help"], monkeypatch, capsys)
    assert parsers, f"`ffpipe {command} --help` printed no argparse help"
    assert option_problems(parsers[0]) == []


def test_the_top_level_help_lists_every_command_of_the_table(capsys):
    _, out, _ = run(["--help"], capsys)
    for name, command in COMMANDS.items():
        assert f"  {name} " in out and command.help in out


# ------------------------------------------------------------------ train --help

@pytest.fixture(scope="module")
def train_help_text():
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["train", "--help"]) == 0
    return buf.getvalue()


def test_train_help_wraps_at_100_columns(train_help_text):
    longest = max(train_help_text.splitlines(), key=len)
    assert len(longest) <= HELP_WIDTH, longest


def test_train_help_groups_keys_by_section_in_config_order(train_help_text):
    starts = [train_help_text.index(f"\n[{s}]") for s in SECTIONS]
    assert starts == sorted(starts)
    for key, _, _ in iter_fields(RunConfig()):
        section = key.partition(".")[0]
        if section in SECTIONS:
            block = train_help_text[train_help_text.index(f"\n[{section}]"):]
            assert f"--{key}" in block.split("\n\n")[0], key


def entry(text: str, key: str) -> str:
    """The lines of one key's entry: its head line and the indented help under it."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(f"  --{key} ") or
             line.startswith(f"  --{key},"))
    body = [lines[i]]
    for line in lines[i + 1:]:
        if not line.startswith("        "):
            break
        body.append(line.strip())
    return " ".join(body)


def test_train_help_shows_each_keys_help_its_cli_style_default_and_choices(train_help_text):
    for key, value, meta in iter_fields(RunConfig()):
        text = entry(train_help_text, key)
        assert " ".join(meta["help"].split()) in text, key
        if "default:" not in meta["help"]:
            assert f"(default: {cli_value(value)}" in text, key
        for choice in meta.get("choices") or ():
            assert choice in text.split("\n")[0], (key, choice)
    layers = entry(train_help_text, "model.layers")
    assert "784,1000,1000,1000" in layers and "[784" not in layers


def test_train_help_puts_each_short_flag_beside_the_key_it_sets(train_help_text):
    for flag, key in SHORT_FLAGS.items():
        if flag != key:
            assert entry(train_help_text, key).startswith(f"  --{key}, --{flag}"), flag


def test_train_help_ends_with_examples_that_parse(train_help_text):
    examples = train_help_text.split("\nexamples:\n")[1].strip().splitlines()
    assert examples
    for line in examples:
        command = re.split(r"\s{2,}", line.strip())[0]  # then, after a gap, what it does
        assert command.startswith("ffpipe train ")
        parse_overrides(command.split()[2:])  # every example is made of real options


# ------------------------------------------------------------------ errors, version

def one_line_error(argv, capsys) -> str:
    rc, out, err = run(argv, capsys)
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ffpipe: error:"), err
    return lines[0]


def test_a_misspelt_command_is_an_invalid_choice_with_a_suggestion(capsys):
    line = one_line_error(["trian"], capsys)
    assert "invalid choice" in line and "did you mean train?" in line


def test_no_command_says_what_to_give(capsys):
    assert "give a command" in one_line_error([], capsys)


@pytest.mark.parametrize("argv, words", [
    (["train", "--epoch", "3"], ["--epoch", "did you mean --epochs?"]),
    (["train", "--train.lrr", "0.1"], ["train.lrr", "did you mean train.lr?"]),
    (["train", "--train.lrr"], ["--train.lrr", "did you mean --train.lr?"]),
    (["train", "--trian.epochs", "3"], ["trian", "did you mean train?"]),
    (["train", "--batch_size", "3"], ["did you mean --batch-size?"]),
    (["train", "--optimizer", "adam"], ["--optimizer", "did you mean --train.optimizer?"]),
    (["train", "--train.optimizer", "adamw"], ["train.optimizer", "did you mean adam?"]),
    (["train", "--no-epochs"], ["--no-epochs", "boolean"]),
    (["drift", "runs/x", "--intervl", "3"], ["--intervl", "did you mean --interval?"]),
    (["data", "export-idz", "d"], ["export-idz", "did you mean export-idx?"]),
    (["drift"], ["RUN_DIR"]),
])
def test_a_mistake_is_one_line_naming_it_and_what_was_meant(argv, words, capsys):
    line = one_line_error(argv, capsys)
    assert all(w in line for w in words), line


def test_toml_mistakes_say_what_was_meant(tmp_path):
    from pipeline.errors import ConfigError
    cases = {"[trian]\nepochs = 2\n": "did you mean train?",
             "[train]\nepoch = 2\n": "did you mean train.epochs?",
             "epochs = 2\n": "belongs in [train]"}
    for text, words in cases.items():
        path = tmp_path / "run.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("?", r"\?")):
            load_config(str(path))


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, capsys):
    rc, out, err = run([flag], capsys)
    assert rc == 0 and out.strip() == f"ffpipe {__version__}"


@pytest.mark.parametrize("argv, value", [
    (["--head"], "true"), (["--head", "true"], "true"), (["--head", "false"], "false"),
    (["--head=false"], "false"), (["--no-head"], "false"), (["--head", "no"], "false"),
    (["--model.head"], "true"), (["--no-model.head"], "false"),
])
def test_a_boolean_takes_every_spelling(argv, value):
    assert parse_overrides(argv + ["--epochs", "2"]) == (
        None, [("model.head", value), ("train.epochs", "2")])
    assert load_config(None, parse_overrides(argv)[1]).model.head is (value == "true")


def test_resume_takes_auto_as_well():
    assert parse_overrides(["--resume", "auto"])[1] == [("pipeline.resume", "auto")]
    assert parse_overrides(["--no-resume"])[1] == [("pipeline.resume", "false")]


def test_a_command_parser_raises_one_user_error_line_with_a_suggestion():
    p = command_parser("ffpipe thing", "does a thing")
    p.add_argument("--colour", choices=("red", "green"), default="red", help="which")
    with pytest.raises(UserError, match=r"--colour.*did you mean green\?") as info:
        p.parse_args(["--colour", "gren"])
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"did you mean --colour\?"):
        p.parse_args(["--color", "red"])


def test_help_and_bad_options_do_not_import_torch():
    cases = [["--help"], ["--version"], ["train", "--help"], ["train", "--epoch", "3"],
             ["trian"], ["worker", "--help"], ["drift", "--help"], ["keys", "--help"],
             ["data", "--help"]]
    script = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from pipeline.cli import main
        seen = []
        for argv in {cases!r}:
            with contextlib.redirect_stdout(io.StringIO()), \\
                    contextlib.redirect_stderr(io.StringIO()):
                rc = main(argv)
            seen.append([argv, rc, "torch" in sys.modules])
        print(json.dumps(seen))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    results = json.loads(out)
    assert [r for r in results if r[2]] == []
    assert [r[1] for r in results] == [0, 0, 0, 2, 2, 0, 0, 0, 0]
