"""Hard negatives in the pipelined schedule: the source's side of the feedback edge.

Hard negatives (Hinton's MATLAB code) sample each image's wrong label from the model's
own label scores. A pipeline's source has no model, so the scores travel:

    source --score--> stage 0 .. stage K-1 --score--> sink --scores--> source
            (training images x every label:          (one row of C goodness sums
             each stage adds its goodness, as         per image, over the feedback
             for an evaluation)                       hop, never blocking the sink)

The source re-scores the whole training set once every `train.hard_refresh_epochs`
epochs, a chunk of `pipeline.eval_batch` images at a time, spread evenly over the
steps; at the start of each epoch it draws that epoch's wrong labels from the newest
scores it holds (`BatchStream.hard_from_scores`: the same sampling as lockstep, which
scores the whole set with the epoch-start weights instead). Images not scored yet get
a uniform wrong label. How old the scores are is logged with every epoch's table.
"""

from __future__ import annotations

import math

import torch

from pipeline.batches import BatchStream
from pipeline.config import RunConfig
from pipeline.datasets import Dataset
from pipeline.ff import overlay_all
from pipeline.wire import Message


class HardNegatives:
    def __init__(self, cfg: RunConfig, ds: Dataset, stream: BatchStream):
        self.cfg, self.ds, self.stream = cfg, ds, stream
        n, C = len(ds.x_train), ds.num_classes
        self.scores = torch.zeros(n, C)
        self.scored_at = torch.full((n,), -1, dtype=torch.int64)  # source step of the score
        self.chunk = cfg.pipeline.eval_batch
        self.n_chunks = math.ceil(n / self.chunk)
        self.period = max(cfg.train.hard_refresh_epochs * stream.per_epoch, 1)  # steps
        self.sent = 0                 # score chunks sent so far (cycles over the set)
        self.received = 0
        self.tables: list[dict] = []  # per epoch: how fresh its scores were
        m = cfg.model
        self.width = sum(cfg.model.layers[1 + m.skip_layers:])

    # ---- what goes out ---------------------------------------------------------------
    def due(self, step: int) -> int:
        """Score chunks to send after source step `step`: `n_chunks` per `period` steps,
        spread evenly. None in the last epoch: no table would use them."""
        if step // self.stream.per_epoch >= self.stream.epochs - 1:
            return 0
        at = step % self.period
        return ((at + 1) * self.n_chunks) // self.period - (at * self.n_chunks) // self.period

    def messages(self, step: int):
        for _ in range(self.due(step)):
            c = self.sent % self.n_chunks
            idx = torch.arange(c * self.chunk, min((c + 1) * self.chunk, len(self.scores)))
            x = overlay_all(self.ds.x_train[idx], self.ds.num_classes,
                            self.cfg.model.label_strength)
            self.sent += 1
            yield Message("score", meta={"step": step, "chunk": c},
                          tensors={"x": x, "acc": torch.zeros(len(x)), "idx": idx})

    # ---- what comes back -------------------------------------------------------------
    def take(self, msg: Message) -> None:
        """Store the scores of one chunk (the message has passed `protocol.check_scores`)."""
        idx = msg.tensors["idx"]
        self.scores[idx] = msg.tensors["scores"].float()
        self.scored_at[idx] = msg.meta["step"]
        self.received += 1

    def table(self, epoch: int, step: int) -> torch.Tensor:
        """This epoch's wrong label per training image, from the newest scores."""
        scored = self.scored_at >= 0
        age = (step - self.scored_at[scored]).float()
        self.tables.append({
            "epoch": epoch, "step": step, "scored_fraction": float(scored.float().mean()),
            "mean_age_steps": float(age.mean()) if len(age) else None,
            "max_age_steps": int(age.max()) if len(age) else None})
        return self.stream.hard_from_scores(epoch, self.scores, self.width)

    def summary(self) -> dict:
        used = [t for t in self.tables if t["mean_age_steps"] is not None]
        return {"score_chunks_sent": self.sent, "score_chunks_received": self.received,
                "tables": len(self.tables),
                "mean_scored_fraction": (sum(t["scored_fraction"] for t in self.tables)
                                         / max(len(self.tables), 1)),
                "mean_age_steps": (sum(t["mean_age_steps"] for t in used) / len(used)
                                   if used else None)}

    def state(self) -> dict:
        return {"scores": self.scores, "scored_at": self.scored_at, "sent": self.sent}

    def restore(self, state: dict | None) -> None:
        if state and state["scores"].shape == self.scores.shape:
            self.scores, self.scored_at = state["scores"], state["scored_at"]
            self.sent = int(state["sent"])
