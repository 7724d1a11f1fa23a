"""A pipelined run on the local transport starts its processes with spawn, and spawn makes
each child import the user's main script again (as `__mp_main__`) before it runs. A script
that calls `train()` at its top level, outside `if __name__ == "__main__":`, would call it
again in every child, which multiprocessing answers with a long traceback per child.

`check_main_guard` finds that before any process starts and says so in one line. Should
a child still get there (a script whose source cannot be read), it stops with the same
line instead of the traceback.
"""

from __future__ import annotations

import ast
import multiprocessing
import sys
from pathlib import Path

from pipeline.errors import ConfigError

MESSAGE = ("{script} calls train() at its top level, and the pipelined schedule's processes "
           "(started with spawn) import that file again, each calling train() once more: "
           "put the call under `if __name__ == \"__main__\":` (README, \"Python API\")")


def _is_main_test(node: ast.expr) -> bool:
    """`__name__ == "__main__"`, either way round."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and
            isinstance(node.ops[0], ast.Eq)):
        return False
    sides = [node.left, node.comparators[0]]
    return any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
        any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides)


def _guarded_lines(source: str) -> list[tuple[int, int]]:
    """Line ranges of the top-level `if __name__ == "__main__":` blocks."""
    return [(n.lineno, n.end_lineno) for n in ast.parse(source).body
            if isinstance(n, ast.If) and _is_main_test(n.test)]


def unguarded_script() -> str | None:
    """The main script's path if spawn will import it again in each child and this call
    comes from its top level outside a `__main__` guard; else None (also when unsure)."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None and (spec_name == "__main__" or spec_name.endswith(".__main__")):
        return None  # `python -m pkg`: spawn does not import a package's __main__ again
    path = getattr(main, "__file__", None)
    if path is None:
        return None  # an interactive session or `python -c`: nothing to import again
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and
                                     frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None:
        return None  # the script's top level has finished: this is not an import
    try:
        guarded = _guarded_lines(Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    line = frame.f_lineno
    return None if any(lo <= line <= hi for lo, hi in guarded) else path


def check_main_guard() -> None:
    """ConfigError if starting spawned processes now would run train() again in each; in
    a child that is importing the main script, a one-line exit instead."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # multiprocessing's own test for "a child still bootstrapping" (spawn.py)
        raise SystemExit("ffpipe: error: " + MESSAGE.format(script="the main script"))
    script = unguarded_script()
    if script is not None:
        raise ConfigError(MESSAGE.format(script=Path(script).name))
