"""`StageWorker`: one FF layer as its own process. Receive, act by kind, forward.

    train  one optimizer step on (pos, neg); forward the normalized, detached outputs
    eval   no update; add this layer's goodness to the per-candidate accumulator; forward
    probe  no update; record drift of this stage's input; forward
    ctrl   stop / checkpoint / epoch: act, then forward

Every forwarded message gets this stage's version (its number of updates) appended to
`versions`, so any stage downstream can tell how stale its input is.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import time

import torch

from pipeline.config import RunConfig
from pipeline.drift import DriftMonitor
from pipeline.layer_trainer import LayerTrainer
from pipeline.records import LayerStats, StageLog, train_record
from pipeline.runtime import checkpoint
from pipeline.runtime.board import StampBoard
from pipeline.runtime.flow import Flow
from pipeline.runtime.protocol import check_meta, expect
from pipeline.runtime.replay import ReplayBuffer
from pipeline.wire import Message, WireError

log = logging.getLogger(__name__)
DRAIN_LIMIT = 64  # 'latest' policy: most messages pulled ahead to find the freshest


class StageWorker:
    def __init__(self, index: int, cfg: RunConfig, flow: Flow, board=None,
                 device: str = "cpu", restarts: int = 0):
        self.k, self.cfg, self.flow = index, cfg, flow
        self.last = index == cfg.n_layers - 1
        self.board = board or StampBoard()
        self.device = torch.device(device)
        self.trainer = LayerTrainer(index, cfg, device)
        self.d_in = cfg.model.layers[index]
        self.monitor = DriftMonitor(index, cfg.drift)
        self.replay = ReplayBuffer(cfg.pipeline.replay) if cfg.pipeline.replay else None
        self.ckpt = checkpoint.ckpt_path(cfg.out, f"stage{index}")
        self.pending: collections.deque[Message] = collections.deque()
        self.stats = LayerStats()
        self.samples = self.drops = self.stale_drops = 0
        self.source_step = 0
        self.stale_sum = [0.0] * index
        self.stale_n = 0
        self.stale_total, self.stale_count = 0.0, 0
        self.t_start = time.monotonic()
        self._last_log = (self.t_start, 0)
        self.log = None
        self.restarts = restarts  # torchrun's TORCHELASTIC_RESTART_COUNT
        self.trained_upto = -1    # resumed: the last source step trained on before
        self.resent = 0           # inputs forwarded without training (already trained on)

    # ---- lifecycle -------------------------------------------------------------------
    def run(self) -> None:
        resumed = self.restore() if self.cfg.pipeline.resuming else False
        self.log = StageLog(self.cfg, self.k, append=self.cfg.pipeline.resuming)
        self.log.write({"kind": "start", "stage": self.k, "pid": os.getpid(),
                        "host": socket.gethostname(), "device": str(self.device),
                        "version": self.trainer.version, "resumed": resumed,
                        "restarts": self.restarts})
        try:
            while True:
                msg = self.next_message()
                try:
                    check_meta(msg.kind, msg.meta)
                    if msg.kind != "ctrl" and len(msg.versions) != self.k:
                        raise WireError(f"{msg.kind} message with {len(msg.versions)} version "
                                        f"stamps; stage {self.k} takes one per upstream stage")
                    handler = getattr(self, f"on_{msg.kind}", None)
                    if handler is None:  # a kind only the source takes (scores)
                        raise WireError(f"a stage takes no {msg.kind} messages")
                    out = handler(msg)
                except WireError as exc:  # well-formed bytes, wrong content: skip it
                    self.flow.inbox.reject(str(exc), msg)
                    continue
                if out is not None:
                    self.flow.send(out)
                if msg.kind == "ctrl" and msg.meta["op"] == "stop":
                    return
        finally:
            self.save()
            self.log.close()

    def restore(self) -> bool:
        """Continue from this stage's checkpoint; False when there is none (fresh start)."""
        state = checkpoint.load(self.ckpt)
        if state is None:
            log.info("stage %d: no checkpoint at %s, starting fresh", self.k, self.ckpt)
            return False
        self.trainer.load_state_dict(state["trainer"])
        self.samples, self.source_step = state["samples"], state["source_step"]
        self.trained_upto = self.source_step if self.samples else -1
        self.drops, self.stale_drops = state.get("drops", 0), state.get("stale_drops", 0)
        log.info("stage %d: resumed at version %d", self.k, self.trainer.version)
        return True

    def save(self) -> None:
        checkpoint.save_atomic(self.ckpt, {
            "trainer": self.trainer.state_dict(), "samples": self.samples,
            "source_step": self.source_step, "drops": self.drops,
            "stale_drops": self.stale_drops})

    # ---- input policy ----------------------------------------------------------------
    def next_message(self) -> Message:
        if not self.pending:
            self.pending.append(self.flow.recv())
        if self.cfg.pipeline.queue_policy == "latest":
            while len(self.pending) < DRAIN_LIMIT and (m := self.flow.poll()) is not None:
                self.pending.append(m)
            trains = [i for i, m in enumerate(self.pending) if m.kind == "train"]
            if len(trains) > 1:  # keep only the freshest train input; never drop the rest
                keep = trains[-1]
                self.drops += len(trains) - 1
                self.pending = collections.deque(
                    m for i, m in enumerate(self.pending) if m.kind != "train" or i == keep)
        return self.pending.popleft()

    def forward_as(self, msg: Message, tensors: dict, version: int) -> Message:
        return Message(kind=msg.kind, versions=msg.versions + [version], meta=msg.meta,
                       tensors=tensors)

    def tensor_in(self, msg: Message, name: str, width: int | None = None, rows: int | None = None,
          ndim: int = 2) -> torch.Tensor:
        return expect(msg, name, width, rows, ndim).to(self.device, non_blocking=True)

    # ---- message kinds ---------------------------------------------------------------
    def on_train(self, msg: Message) -> Message | None:
        # Every check before anything changes: a refused message moves no weight, no
        # version board (its stamps are only read once its tensors passed) and no count.
        self.check_head_inputs(msg)
        if msg.meta["step"] <= self.trained_upto:
            return self.forward_only(msg)
        pos = self.tensor_in(msg, "pos", self.d_in)
        neg = self.tensor_in(msg, "neg", self.d_in, rows=len(pos))
        stale = self.board.staleness(msg.versions)
        s_max = self.cfg.pipeline.max_staleness
        if s_max >= 0 and stale and max(stale) > s_max:
            self.stale_drops += 1
            return None
        n = len(pos)
        if self.replay is not None:
            fresh = (pos, neg)
            pos, neg = self.replay.mix(pos, neg)
            self.replay.add(*fresh)
        meta = msg.meta
        out_pos, out_neg, stats = self.trainer.train_step(pos, neg, meta["step"] / meta["total"])
        self.board.publish(self.k, self.trainer.version)
        self.stats.add(stats)
        msg.meta["loss"] = self.stats.means()["loss"]  # for the sink's bar: the last stage's
        self.samples += n
        self.source_step = meta["step"]
        for j, s in enumerate(stale):
            self.stale_sum[j] += s
        self.stale_n += 1
        if stale:
            self.stale_total += sum(stale) / len(stale)
            self.stale_count += 1
        if self.trainer.version % self.cfg.train.log_every == 0:
            self.write_train_record()
        tensors = {} if self.last else {"pos": out_pos[:n], "neg": out_neg[:n]}
        tensors.update(self.head_tensors(msg))
        return self.forward_as(msg, tensors, self.trainer.version)

    def forward_only(self, msg: Message) -> Message:
        """A train input this stage trained on before a resume (the source resends from
        the stage furthest behind): forwarded for downstream, not trained on again."""
        self.resent += 1
        tensors = {}
        if not self.last:
            pos = self.tensor_in(msg, "pos", self.d_in)
            neg = self.tensor_in(msg, "neg", self.d_in, rows=len(pos))
            tensors = {"pos": self.trainer.output(self.trainer.forward(pos)),
                       "neg": self.trainer.output(self.trainer.forward(neg))}
        tensors.update(self.head_tensors(msg))
        return self.forward_as(msg, tensors, self.trainer.version)

    def check_head_inputs(self, msg: Message) -> None:
        """The head's rows (neutral, y, feats) are what `head_tensors` will take."""
        if "neutral" in msg.tensors:
            n = len(expect(msg, "neutral", self.d_in))
            expect(msg, "y", rows=n, ndim=1)
            if "feats" in msg.tensors:
                expect(msg, "feats", rows=n)

    def head_tensors(self, msg: Message) -> dict:
        """Head inputs ride along: the neutral-label rows and the features gathered so far."""
        if "neutral" not in msg.tensors:
            return {}
        h = self.trainer.forward(self.tensor_in(msg, "neutral", self.d_in))
        out = {"y": expect(msg, "y", rows=len(h), ndim=1)}
        feats = [self.tensor_in(msg, "feats", rows=len(h))] if "feats" in msg.tensors else []
        if self.k >= 1:
            feats.append(self.trainer.output(h))
        if feats:
            out["feats"] = torch.cat(feats, dim=1)
        if not self.last:
            out["neutral"] = self.trainer.output(h)
        return out

    def on_eval(self, msg: Message) -> Message:
        """eval (test images, labels `y`) and score (training images for hard negatives,
        rows `idx`): add this layer's goodness for every (image, label) row."""
        h = self.trainer.forward(self.tensor_in(msg, "x", self.d_in))
        acc = self.tensor_in(msg, "acc", rows=len(h), ndim=1)
        rows = "y" if msg.kind == "eval" else "idx"
        expect(msg, rows, ndim=1)
        if self.k >= self.cfg.model.skip_layers:
            acc = acc + self.trainer.goodness(h)  # never write into a received buffer
        tensors = {"acc": acc, rows: msg.tensors[rows]}
        if not self.last:
            tensors["x"] = self.trainer.output(h)
        tensors.update(self.head_tensors(msg))
        return self.forward_as(msg, tensors, self.trainer.version)

    on_score = on_eval

    def on_probe(self, msg: Message) -> Message:
        x = self.tensor_in(msg, "x", self.d_in)
        rec = self.monitor.observe(
            x, self.trainer.version, source_step=msg.meta.get("step", 0),
            time=time.monotonic() - self.t_start, staleness=self.board.staleness(msg.versions))
        self.log.write(rec)
        tensors = {} if self.last else {"x": self.trainer.output(self.trainer.forward(x))}
        return self.forward_as(msg, tensors, self.trainer.version)

    def on_ctrl(self, msg: Message) -> Message:
        op = msg.meta["op"]
        if op == "checkpoint":
            self.save()
        elif op == "stop":
            if self.stats.n:  # steps since the last record: a record with nothing is a lie
                self.write_train_record()
            before = msg.meta.get("stages", [])
            before = before if isinstance(before, list) else []
            msg.meta = {**msg.meta, "stages": before + [self.final_stats()]}
        return self.forward_as(msg, {}, self.trainer.version)

    # ---- logging ---------------------------------------------------------------------
    def write_train_record(self) -> None:
        now = time.monotonic()
        t_prev, s_prev = self._last_log
        self._last_log = (now, self.samples)
        wait_recv, wait_send = self.flow.take_waits()
        n = max(self.stale_n, 1)
        inbox = self.flow.inbox
        rec = train_record(
            stage=self.k, step=self.trainer.version, source_step=self.source_step,
            time=now - self.t_start, samples=self.samples,
            samples_per_s=(self.samples - s_prev) / max(now - t_prev, 1e-9),
            means=self.stats.means(), staleness=[s / n for s in self.stale_sum],
            lr=float(self.trainer.opt.param_groups[0]["lr"]), queue_depth=inbox.depth(),
            drops=self.drops, stale_drops=self.stale_drops, rejected=inbox.rejected,
            gaps=inbox.gaps, wait_recv_s=wait_recv, wait_send_s=wait_send)
        self.stats.reset()
        self.stale_sum, self.stale_n = [0.0] * self.k, 0
        self.log.write(rec)

    def final_stats(self) -> dict:
        elapsed = time.monotonic() - self.t_start
        return {"stage": self.k, "samples": self.samples, "version": self.trainer.version,
                "samples_per_s": self.samples / max(elapsed, 1e-9), "drops": self.drops,
                "stale_drops": self.stale_drops, "rejected": self.flow.inbox.rejected,
                "gaps": self.flow.inbox.gaps, "skipped_steps": self.trainer.skipped_steps,
                "mean_staleness": self.stale_total / max(self.stale_count, 1),
                "staleness_exact": self.board.exact, "resent": self.resent,
                "restarts": self.restarts, "pid": os.getpid(),
                "device_bytes_sent": self.flow.outbox.device_bytes,
                "cpu_seconds": time.process_time(),
                "drift": self.monitor.summary()}
