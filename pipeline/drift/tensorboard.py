"""Optional TensorBoard mirror of the JSONL records (JSONL stays the source of truth)."""

from __future__ import annotations

import math

from pipeline.errors import UserError

# Identity and bookkeeping fields, not curves worth plotting.
_SKIP = {"kind", "stage", "step", "source_step", "probe", "time"}


class TensorBoardMirror:
    def __init__(self, log_dir):
        try:  # lazy: tensorboard is an optional extra, most runs never import it
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("drift.tensorboard needs TensorBoard: pip install tensorboard "
                            "(from a checkout: pip install -e '.[tensorboard]'), or set "
                            "drift.tensorboard = false") from None
        self._writer = SummaryWriter(str(log_dir))

    def write(self, record: dict, stage: int) -> None:
        """Each numeric field as scalar `stage{k}/{kind}/{field}`; lists as their mean."""
        step = record.get("source_step", record.get("step", 0))
        kind = record.get("kind", "log")
        for key, value in record.items():
            if key in _SKIP:
                continue
            if isinstance(value, list):  # e.g. staleness per upstream stage
                nums = [v for v in value if isinstance(v, (int, float))]
                value = sum(nums) / len(nums) if nums else None
            if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
                self._writer.add_scalar(f"stage{stage}/{kind}/{key}", float(value), step)

    def close(self) -> None:
        self._writer.close()
