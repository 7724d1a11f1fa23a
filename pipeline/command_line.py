"""What every `ffpipe` subcommand's parser shares (`command_parser`): help on stdout with
every option's default shown, wrapped at 100 columns, paragraphs and indented examples
kept as written; no abbreviated options (`--seed` never silently means `--seeds`); and a
mistake raised as one `UserError` line (the cli prints `ffpipe: error: ...`, exit 2) with
"did you mean" for a misspelt option or choice.

    p = command_parser("ffpipe plot", "accuracy and loss over training",
                       epilog="example:\\n  ffpipe plot runs/a runs/b --out both.png")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders")
    p.add_argument("--out", default="training.png", help="figure to write")
    args = p.parse_args(argv)

Only the standard library: `ffpipe --help` and a bad option never import torch.
"""

from __future__ import annotations

import argparse
import re
import shutil
import textwrap

from pipeline.errors import UserError, did_you_mean

HELP_WIDTH = 100


def help_width() -> int:
    """100 columns, or the terminal's width when it is narrower."""
    return max(40, min(HELP_WIDTH, shutil.get_terminal_size((HELP_WIDTH, 24)).columns))


def fill(text: str, width: int | None = None, indent: str = "") -> str:
    """Wrap each paragraph of `text`; lines that start with a space (examples, tables)
    are kept as they are."""
    width = width or help_width()
    out = []
    for block in text.strip("\n").split("\n\n"):
        lines = block.split("\n")
        if any(line.startswith(" ") for line in lines[1:]) or block.startswith(" "):
            out.append("\n".join(indent + line for line in lines))
        else:
            out.append(textwrap.fill(" ".join(lines), width, initial_indent=indent,
                                     subsequent_indent=indent))
    return "\n\n".join(out)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown after each option's help; description and epilog wrapped by
    paragraph (`fill`) instead of into one block."""

    def __init__(self, prog: str):
        super().__init__(prog, width=help_width(), max_help_position=30)

    def _fill_text(self, text, width, indent):
        return fill(text, width, indent)

    def _get_help_string(self, action):
        # A help that states its default itself, or a positional argument, gets none added.
        if not action.option_strings or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose mistakes are one `UserError` line."""

    def error(self, message: str):
        where = "" if self.prog == "ffpipe" else f"{self.prog}: "  # the cli prints `ffpipe:`
        raise UserError(f"{where}{message}{self._suggestion(message)}; "
                        f"`{self.prog} --help` shows the options")

    def _suggestion(self, message: str) -> str:
        bad = re.search(r"invalid choice: '?([^'\s]+)'? \(choose from (.*)\)", message)
        if bad:
            choices = [c.strip(" '") for c in bad.group(2).split(",")]
            return did_you_mean(bad.group(1), choices)
        if message.startswith("unrecognized arguments:"):
            for word in message.split(":", 1)[1].split():
                if word.startswith("-"):
                    return did_you_mean(word.split("=")[0], self._option_string_actions)
        return ""


def command_parser(prog: str, description: str, epilog: str | None = None,
                   **kw) -> CommandParser:
    """The parser of one `ffpipe` subcommand, following the conventions above. Give every
    option a `help`; a `default` of None should say in the help what None means."""
    kw.setdefault("formatter_class", HelpFormatter)
    kw.setdefault("allow_abbrev", False)
    return CommandParser(prog=prog, description=description, epilog=epilog, **kw)
