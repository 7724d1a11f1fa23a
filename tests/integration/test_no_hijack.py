"""Workers cannot be hijacked: a `pipeline.py` (or `pipeline/` package, or `torch.py`) in
the working directory does not replace the installed package in the processes that
`ffpipe train`, the installed `ffpipe` script and the launch scripts start (they run
Python with -P; a console script's path holds its own folder, not the working one)."""

import json
import sys
from pathlib import Path

import pytest

from conftest import SYNTH, free_port_block

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]
EVIL = "import sys; print('HIJACKED', file=sys.stderr); sys.exit(42)\n"


def hostile_cwd(tmp_path) -> Path:
    cwd = tmp_path / "cwd"
    (cwd / "pipeline").mkdir(parents=True)
    (cwd / "pipeline.py").write_text(EVIL)
    (cwd / "pipeline" / "__init__.py").write_text(EVIL)
    (cwd / "pipeline" / "__main__.py").write_text(EVIL)
    (cwd / "torch.py").write_text(EVIL)
    return cwd


@pytest.mark.parametrize("how", ["zmq", "dist", "zmq_local.sh", "torchrun_local.sh",
                                 "ffpipe script"])
def test_a_pipeline_module_in_the_working_directory_does_not_shadow_the_workers(
        procs, tmp_path, how):
    cwd, out = hostile_cwd(tmp_path), tmp_path / "run"
    args = [*SYNTH, "--layers", "64,40,40", "--epochs", "2", "--out", str(out),
            "--net.base_port", str(free_port_block(4))]
    if how.endswith(".sh"):
        cmd = ["bash", str(ROOT / "launch" / how), *args]
    elif how == "ffpipe script":  # the installed entry point (what compose services run)
        script = Path(sys.executable).with_name("ffpipe")
        if not script.exists():
            pytest.skip("no ffpipe script beside this interpreter")
        cmd = [str(script), "train", *args, "--transport", "zmq"]
    else:  # the user's own command is theirs to get right: -P here too
        cmd = [sys.executable, "-P", "-m", "pipeline", "train", *args, "--transport", how]
    p = procs.popen(cmd, cwd=cwd, env={"GLOO_SOCKET_IFNAME": "lo"})
    _, err = p.communicate(timeout=200)
    assert p.returncode == 0 and "HIJACKED" not in err, err[-3000:]
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] > 0.2  # it trained (chance: 0.1)
