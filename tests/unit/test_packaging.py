"""What `pip show` and a reader of the README see: the LICENSE file the metadata names,
project URLs and classifiers, and no file named in the README that the repository lacks
(nor one outside it)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_license_file_is_the_one_the_metadata_names():
    assert PROJECT["license"] == "MIT"  # an SPDX expression (PEP 639)
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert re.search(r"Copyright \(c\) \d{4} ff-pipeline contributors", text)


def test_metadata_has_urls_and_classifiers_setuptools_accepts():
    assert PROJECT["urls"]
    for url in PROJECT["urls"].values():
        parsed = urlparse(url)
        assert parsed.scheme == "https" and parsed.hostname, url
    classifiers = PROJECT["classifiers"]
    # setuptools refuses a License :: classifier beside a license expression.
    assert not [c for c in classifiers if c.startswith("License ::")]
    oldest = PROJECT["requires-python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {oldest}" in classifiers


def readme_paths() -> list[str]:
    """Every word in a code span or a link of the README that looks like a path."""
    text = (ROOT / "README.md").read_text()
    spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)\s]+)\)", text)
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    words = [w.strip(",;:()'\"") for s in spans + blocks for w in s.split()]
    return [w for w in words if "/" in w and "://" not in w]


def test_every_file_the_readme_names_is_in_the_repository():
    repo_dirs = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    packages = {p.parent.name for p in (ROOT / "pipeline").glob("*/__init__.py")}
    missing, outside, checked = [], [], 0
    for word in readme_paths():
        if word.startswith("../") or "/../" in word:
            outside.append(word)
            continue
        if any(c in word for c in "{}<>$*…") or word.startswith(("/", "-")):
            continue  # a pattern, a placeholder, an option or a path inside a container
        first = word.split("/")[0]
        if first in repo_dirs:
            path = ROOT / word
        elif first in packages:  # runtime/flow.py: a module of the package
            path = ROOT / "pipeline" / word
        else:
            continue  # a run folder (runs/NAME/...) or a dataset layout (DIR/MNIST/raw)
        checked += 1
        if not (path.exists() or path.with_name(path.name + ".py").exists()):  # or a module
            missing.append(word)
    assert not outside, f"the README points outside the repository: {outside}"
    assert not missing, f"the README names files the repository does not have: {missing}"
    assert checked > 20  # the rule above still finds the README's paths
