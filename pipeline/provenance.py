"""Where a run came from: written into config.json and summary.json so a result can be
traced to the code, the libraries and the command that made it."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def git_commit(where: Path = Path(__file__).parent) -> str | None:
    """The commit of the checkout the package runs from (an editable install), with
    `+dirty` if it has uncommitted changes; None outside a git checkout."""
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(where), *a], capture_output=True,  # noqa: E731
                                        text=True, timeout=5)
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return None
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line() -> list[str]:
    """How this process was started, as the user typed it (`python -m pipeline ...` shows
    as such rather than as the path of `__main__.py`)."""
    first = Path(sys.argv[0])
    head = ["python", "-m", first.parent.name] if first.name == "__main__.py" else [first.name]
    return head + sys.argv[1:]


def provenance() -> dict:
    return {"ff_pipeline": _version("ff-pipeline"), "git_commit": git_commit(),
            "python": platform.python_version(), "torch": _version("torch"),
            "command": command_line(),
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
