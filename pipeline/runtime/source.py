"""The source: streams epochs of train batches (positives and negatives built here),
injects eval batches (held-out images x every label) and probe batches (the same fixed
training images every time), then a final evaluation and a stop.

Batches come from `pipeline.batches.BatchStream`, the stream every schedule trains on:
a pure function of (seed, epoch, step), so a resumed source regenerates exactly the
stream it would have sent.
"""

from __future__ import annotations

import logging
import math
import os
import time

import torch

from pipeline.batches import BatchStream
from pipeline.config import RunConfig
from pipeline.datasets import Dataset
from pipeline.drift.probe_set import probe_inputs
from pipeline.ff import overlay, overlay_all
from pipeline.runtime import checkpoint
from pipeline.runtime.flow import Flow
from pipeline.runtime.hard_negatives import HardNegatives
from pipeline.runtime.protocol import check_meta, expect, start_message
from pipeline.transport.channel import Channel
from pipeline.wire import Message, WireError, ctrl

log = logging.getLogger(__name__)


class Source:
    def __init__(self, cfg: RunConfig, ds: Dataset, flow: Flow,
                 feedback: Channel | None = None):
        self.cfg, self.ds, self.flow = cfg, ds, flow
        self.C = ds.num_classes
        self.batch_stream = BatchStream(cfg, ds)
        self.feedback = feedback  # hard negatives: the sink's scores come back here
        self.hard = (HardNegatives(cfg, ds, self.batch_stream)
                     if cfg.train.negatives == "hard" else None)
        self.n, self.B = self.batch_stream.n, self.batch_stream.B
        self.per_epoch, self.total = self.batch_stream.per_epoch, self.batch_stream.total
        self.ckpt = checkpoint.ckpt_path(cfg.out, "source")
        self.eval_id = 0

    def run(self) -> None:
        state = checkpoint.load(self.ckpt) if self.cfg.pipeline.resuming else None
        self.sent = state["step"] if state else 0  # how far an earlier session got
        self.eval_id = state["eval_id"] if state else 0
        if self.hard is not None:
            self.hard.restore(state.get("hard") if state else None)
        self.done = start = self.resume_step() if state else 0
        try:
            self.stream(start)
        finally:  # stopped or finished: remember how far the stream got
            self.save(max(self.done, self.sent))

    def resume_step(self) -> int:
        """Where a resumed stream starts: the oldest point any stage has trained to, so no
        stage misses a batch (a stage skips training on what it already trained on, and
        only forwards it). A stage whose checkpoint is not in this folder counts as not
        started: the stream is resent from the beginning."""
        start = self.sent
        for k in range(self.cfg.n_layers):
            state = checkpoint.load(checkpoint.ckpt_path(self.cfg.out, f"stage{k}"))
            upto = state["source_step"] + 1 if state and state["samples"] else 0
            if upto < start:
                log.info("source: stage %d trained up to step %d of the %d sent; resending "
                         "from there", k, upto, self.sent)
                start = upto
        return start

    def stream(self, start: int) -> None:
        if start:
            log.info("source: resuming at step %d of %d", start, self.total)
        probe, probe_every = self.probe(), self.cfg.drift.probe_every
        eval_every, ckpt_every = self.cfg.train.eval_every, self.cfg.pipeline.ckpt_every
        budget = self.cfg.train.epochs * self.n
        self.flow.send(start_message(classes=self.C, total_samples=budget,
                                     done_samples=min(start * self.B, budget), step=start))
        epoch_seen, hard_table = None, None
        if self.hard is not None:
            def hard_table(epoch):  # called as each epoch starts: the newest scores
                self.take_scores()
                return self.hard.table(epoch, epoch * self.per_epoch)
        for step, epoch, _, x, y, wrong in self.batch_stream.batches(start, hard_table):
            if epoch != epoch_seen and epoch_seen is not None:
                fresh = {"hard": self.hard.tables[-1]} if self.hard and self.hard.tables else {}
                self.flow.send(ctrl("epoch", epoch=epoch, step=step, **fresh))
            epoch_seen = epoch
            if probe_every and step % probe_every == 0 and step >= self.sent:
                self.flow.send(Message("probe", meta={"step": step}, tensors={"x": probe}))
            pos, neg = self.batch_stream.pair(x, y, wrong)
            tensors = {"pos": pos, "neg": neg}
            if self.cfg.model.head:
                tensors.update(neutral=self.batch_stream.neutral(x), y=y)
            self.flow.send(Message("train", meta={"step": step, "epoch": epoch,
                                                  "total": self.total, "n": len(x)},
                                   tensors=tensors))
            self.done = done = step + 1
            if self.hard is not None:
                for msg in self.hard.messages(step):
                    self.flow.send(msg)
                self.take_scores()
            if eval_every and done % eval_every == 0 and self.sent < done < self.total:
                self.send_eval(done, final=False)
            if ckpt_every and done % ckpt_every == 0:
                self.flow.send(ctrl("checkpoint", step=done))
                self.save(done)
        self.send_eval(self.total, final=True)
        stats = {"cpu_seconds": time.process_time(), "pid": os.getpid()}
        if self.hard is not None:
            stats["hard_negatives"] = self.hard.summary()
        self.flow.send(ctrl("stop", step=self.total, source=stats))

    def take_scores(self) -> None:
        """Every scores message the sink has sent back so far (never waits for one)."""
        while self.feedback is not None and (msg := self.feedback.recv(timeout=0)) is not None:
            try:
                check_meta(msg.kind, msg.meta)
                if msg.kind != "scores":
                    raise WireError(f"the source takes only scores messages, not {msg.kind}")
                idx = expect(msg, "idx", ndim=1)
                expect(msg, "scores", self.C, rows=len(idx))
                if len(idx) and not (0 <= int(idx.min()) and int(idx.max()) < self.n):
                    raise WireError("scores message: idx outside the training set")
                self.hard.take(msg)
            except WireError as exc:
                self.feedback.reject(str(exc))

    def probe(self) -> torch.Tensor:
        return probe_inputs(self.ds.x_train, self.ds.y_train, self.cfg, self.C)

    def send_eval(self, step: int, final: bool) -> None:
        x, y = self.ds.x_test, self.ds.y_test
        eb = self.cfg.pipeline.eval_batch
        chunks = math.ceil(len(x) / eb)
        s = self.cfg.model.label_strength
        for c in range(chunks):
            xc, yc = x[c * eb:(c + 1) * eb], y[c * eb:(c + 1) * eb]
            tensors = {"x": overlay_all(xc, self.C, s),
                       "acc": torch.zeros(len(xc) * self.C), "y": yc}
            if self.cfg.model.head:
                tensors["neutral"] = overlay(xc, None, self.C, s)
            self.flow.send(Message("eval", meta={"eval_id": self.eval_id, "chunk": c,
                                                 "n_chunks": chunks, "step": step,
                                                 "final": final}, tensors=tensors))
        self.eval_id += 1

    def save(self, step: int) -> None:
        state = {"step": step, "eval_id": self.eval_id}
        if self.hard is not None:
            state["hard"] = self.hard.state()
        checkpoint.save_atomic(self.ckpt, state)
