"""What the `launch/` scripts need to know from a set of `ffpipe train` options, parsed
exactly as the workers will parse them (so a bad option fails here, in one line).

`python -m pipeline.launch_info OPTIONS...` prints `K STORE`: the number of layers (the
stages to start) and the zmq version-board address (`-` when there is none, e.g. ipc).
"""

from __future__ import annotations

import sys

from pipeline.cli import parse_overrides
from pipeline.config import load_config
from pipeline.errors import UserError


def main(argv: list[str]) -> int:
    try:
        path, overrides = parse_overrides(argv)
        cfg = load_config(path, overrides)
    except UserError as exc:
        print(f"ffpipe: error: {exc}", file=sys.stderr)
        return 2
    net = cfg.net
    store = net.store or ("-" if net.ipc_dir else f"{net.host}:{net.base_port}")
    print(len(cfg.model.layers) - 1, store)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
