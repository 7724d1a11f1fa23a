"""What the `launch/` scripts need to know from a set of `ffpipe train` options, parsed
exactly as the workers will parse them (so a bad option fails here, in one line).

`python -m pipeline.launch_info OPTIONS...` prints `K STORE`: the number of layers (the
stages to start) and the zmq version-board address (`-` when there is none, e.g. ipc).
"""

from __future__ import annotations

import sys

from pipeline.errors import UserError
from pipeline.overrides import config_from_argv
from pipeline.processes.zmq import default_store


def main(argv: list[str]) -> int:
    try:
        cfg = config_from_argv(argv)
    except UserError as exc:
        print(f"ffpipe: error: {exc}", file=sys.stderr)
        return 2
    print(cfg.n_layers, default_store(cfg.net) or "-")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
