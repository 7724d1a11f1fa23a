"""Optional TensorBoard mirror of the run records (`--log.tensorboard`).

The JSONL files stay the source of truth: every ffpipe tool reads them, and a mirror only
copies each record's numbers as it is written. Stage records (train and drift) land in
OUT/tensorboard/stage{k} as `stage{k}/{kind}/{field}`, the sink's accuracy records in
OUT/tensorboard/sink as `sink/eval/{field}`; the x axis is the source step, which puts
every stage and the sink on one clock.
"""

from __future__ import annotations

import math

from pipeline.errors import UserError

# What a user is told to run when the package is missing: from a checkout the extra has to
# be installed in editable mode (the project is not on a package index).
INSTALL_HINT = ("log.tensorboard needs the tensorboard package: in the checkout run "
                "pip install -e '.[tensorboard]', or drop --log.tensorboard")

# Identity and bookkeeping fields, not curves worth plotting.
_SKIP = {"kind", "stage", "step", "source_step", "probe", "time", "eval_id", "final"}


class TensorBoardMirror:
    """Writes each numeric field of a record as one scalar; lists as their mean."""

    def __init__(self, log_dir, prefix: str):
        try:  # lazy: tensorboard is an optional extra, most runs never import it
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(INSTALL_HINT) from None
        self.prefix = prefix
        self._writer = SummaryWriter(str(log_dir))

    def write(self, record: dict) -> None:
        """Each numeric field as scalar `{prefix}/{kind}/{field}` at the record's source
        step (its `step` where it has no source_step: sink records count source steps)."""
        step = record.get("source_step", record.get("step", 0))
        kind = record.get("kind", "log")
        for key, value in record.items():
            if key in _SKIP:
                continue
            if isinstance(value, list):  # e.g. staleness per upstream stage
                nums = [v for v in value if isinstance(v, (int, float))]
                value = sum(nums) / len(nums) if nums else None
            if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
                self._writer.add_scalar(f"{self.prefix}/{kind}/{key}", float(value), step)

    def close(self) -> None:
        self._writer.close()
