"""The README's "Python API" script, run exactly as it is printed there (so the README
cannot drift from the code): a pipelined run from a user's script."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_script() -> str:
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_api_script_runs_as_printed_and_learns(procs, tmp_path):
    script = tmp_path / "train_api.py"
    script.write_text(readme_script())
    p = procs.popen([sys.executable, str(script)], cwd=tmp_path)
    out, err = p.communicate(timeout=280)
    assert p.returncode == 0, err
    found = re.fullmatch(r"pipelined: test accuracy ([\d.]+)%, (\d+) samples per layer in "
                         r"\d+ s -> (runs/\S+)\n", out)
    assert found, out
    assert float(found.group(1)) > 50  # chance is 10 %
    run = tmp_path / found.group(3)
    assert (run / "summary.json").is_file()
    # The first line came before any process started, and names the run folder.
    first = err.splitlines()[0]
    assert "pipelined: starting 4 processes" in first and first.endswith(found.group(3))
    assert procs.alive() == []
