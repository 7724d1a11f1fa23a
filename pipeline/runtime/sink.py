"""The sink: end of the pipeline. Turns eval accumulators into accuracy (goodness
inference, and the head's if it is on), logs accuracy over time to sink.jsonl, shows the
progress bar (starting processes, epoch e/E with the last stage's loss and the latest test
accuracy, final evaluation), and writes summary.json (and the head's weights,
ckpt/head.pt) when the stop arrives.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.config import RunConfig
from pipeline.ff import LinearHead
from pipeline.records import SinkLog, base_summary
from pipeline.runlog import Progress, write_json_atomic
from pipeline.runtime import checkpoint
from pipeline.runtime.flow import Flow
from pipeline.runtime.protocol import check_meta, expect
from pipeline.transport.channel import Channel
from pipeline.wire import Message, WireError

log = logging.getLogger(__name__)
FEEDBACK_WAITING = 256  # scores messages the sink holds while the feedback hop is full


class EvalTally:
    """Correct counts for one streamed evaluation, filled chunk by chunk."""

    def __init__(self, meta: dict):
        self.step, self.final, self.n_chunks = meta["step"], meta["final"], meta["n_chunks"]
        self.chunks, self.n, self.correct, self.head_correct = 0, 0, 0, 0
        self.scores: dict[int, torch.Tensor] = {}


class Sink:
    def __init__(self, cfg: RunConfig, flow: Flow, run_start: float | None = None,
                 feedback: Channel | None = None):
        self.cfg, self.flow = cfg, flow
        self.feedback = feedback  # hard negatives: scores go back to the source here
        self.feedback_waiting: collections.deque[Message] = collections.deque()
        self.feedback_sent = self.feedback_dropped = 0
        self.C = None  # learnt from the source's first message: the sink needs no dataset
        self.out = Path(cfg.out)
        self.run_start = run_start or time.time()
        self.samples = 0
        self.t_last_train = None
        self.arrivals: list[tuple[float, int]] = []  # (time, samples so far) per train msg
        self.tallies: dict[int, EvalTally] = {}
        self.final: dict = {}
        self.history: list[dict] = []
        self.progress = None
        self.head = self.head_opt = None
        self.source_stats: dict = {}
        self.resumed_at = 0  # the source step a resumed stream starts at

    def labels(self, msg: Message, rows: int | None = None) -> torch.Tensor:
        y = expect(msg, "y", rows=rows, ndim=1)
        if y.dtype != torch.int64 or (len(y) and not (0 <= int(y.min()) and
                                                     int(y.max()) < self.C)):
            raise WireError(f"{msg.kind} message: labels must be int64 in 0..{self.C - 1}")
        return y

    def on_start(self, meta: dict) -> None:
        """The stream's start message says what the sink needs to know about the data
        (its fields are checked by `protocol.check_meta`)."""
        if self.C is not None:
            return
        self.C, self.resumed_at = meta["classes"], meta["step"]
        if self.progress is not None:
            self.progress.set_total(meta["total_samples"], meta["done_samples"])
            self.progress.phase(None)  # training: the bar counts epochs
        if self.cfg.model.head:
            self.head = LinearHead(self.cfg.model.layers[2:], self.C)
            self.head_opt = torch.optim.Adam(self.head.parameters(), lr=self.cfg.train.head_lr)

    def run(self) -> dict:
        records = SinkLog(self.cfg, append=self.cfg.pipeline.resuming)
        self.progress = Progress(None, "pipelined", epochs=self.cfg.train.epochs)
        self.progress.phase("starting processes")  # until the source's start message
        try:
            while True:
                msg = self.flow.recv()
                try:
                    rec = self.handle(msg)
                except WireError as exc:  # well-formed bytes, wrong content: skip it
                    self.flow.inbox.reject(str(exc), msg)
                    continue
                if rec is not None:
                    records.write(rec)
                if msg.kind == "ctrl" and msg.meta["op"] == "stop":
                    stats = msg.meta.get("source")
                    self.source_stats = stats if isinstance(stats, dict) else {}
                    return self.finish(msg.meta.get("stages", []), interrupted=False)
        except BaseException:
            self.finish([], interrupted=True)
            raise
        finally:
            records.close()
            if self.progress is not None:
                self.progress.close()

    def handle(self, msg: Message) -> dict | None:
        if self.feedback_waiting:
            self.send_feedback()
        check_meta(msg.kind, msg.meta)
        if msg.kind == "train":
            self.on_train(msg)
        elif msg.kind == "eval":
            return self.on_eval(msg)
        elif msg.kind == "score":
            self.on_score(msg)
        elif msg.kind == "ctrl" and msg.meta["op"] == "start":
            self.on_start(msg.meta)
        elif msg.kind == "ctrl" and msg.meta["op"] == "epoch" and isinstance(
                msg.meta.get("hard"), dict):
            return {"kind": "hard_negatives", "time": time.time() - self.run_start,
                    **{k: v for k, v in msg.meta["hard"].items()
                       if isinstance(v, (int, float, type(None)))}}
        return None

    def on_score(self, msg: Message) -> None:
        """Training images scored by every stage: their rows of C goodness sums go back
        to the source. Never blocks: while the feedback hop is full (or not connected
        yet) they wait here, and are retried with every message that arrives; past
        FEEDBACK_WAITING the oldest are dropped (counted), and the source keeps its older
        scores for those images."""
        if self.C is None or self.feedback is None:
            return
        idx = expect(msg, "idx", ndim=1)
        scores = expect(msg, "acc", rows=len(idx) * self.C, ndim=1).view(-1, self.C)
        self.feedback_waiting.append(Message("scores", meta={"step": msg.meta["step"]},
                                             tensors={"idx": idx, "scores": scores.clone()}))
        if len(self.feedback_waiting) > FEEDBACK_WAITING:
            self.feedback_waiting.popleft()
            self.feedback_dropped += 1
        self.send_feedback()

    def send_feedback(self) -> None:
        while self.feedback_waiting and self.feedback.send(self.feedback_waiting[0], timeout=0):
            self.feedback_waiting.popleft()
            self.feedback_sent += 1

    def on_train(self, msg: Message) -> None:
        n = msg.meta["n"]
        self.samples += n
        self.t_last_train = time.time()
        self.arrivals.append((self.t_last_train, self.samples))
        if self.progress is not None:
            self.progress.update(n, loss=msg.meta.get("loss"))
            if self.progress.total and self.progress.n >= self.progress.total:
                self.progress.phase("final evaluation")
        if self.head is not None and "feats" in msg.tensors:
            feats = expect(msg, "feats", self.head.linear.in_features)
            y = self.labels(msg, len(feats))
            loss = F.cross_entropy(self.head(feats.float()), y)
            self.head_opt.zero_grad(set_to_none=True)
            loss.backward()
            self.head_opt.step()

    def on_eval(self, msg: Message) -> dict | None:
        meta = msg.meta
        if self.C is None:
            raise WireError("eval message before the source's start message")
        y = self.labels(msg)
        scores = expect(msg, "acc", rows=len(y) * self.C, ndim=1).float().view(-1, self.C)
        tally = self.tallies.setdefault(meta["eval_id"], EvalTally(meta))
        if tally.final and self.progress is not None:  # (also when train inputs were dropped)
            self.progress.phase("final evaluation")
        tally.chunks += 1
        tally.n += len(y)
        tally.correct += int((scores.argmax(1) == y).sum())
        if tally.final:
            tally.scores[meta["chunk"]] = scores.clone()
        if self.head is not None and "feats" in msg.tensors:
            with torch.no_grad():
                feats = expect(msg, "feats", self.head.linear.in_features, rows=len(y))
                pred = self.head(feats.float()).argmax(1)
            tally.head_correct += int((pred == y).sum())
        if tally.chunks < tally.n_chunks:
            return None
        del self.tallies[meta["eval_id"]]
        rec = {"kind": "eval", "step": tally.step, "eval_id": meta["eval_id"],
               "time": time.time() - self.run_start, "samples": self.samples,
               "final": tally.final, "test_accuracy": tally.correct / max(tally.n, 1)}
        if self.head is not None:
            rec["head_accuracy"] = tally.head_correct / max(tally.n, 1)
        self.history.append(rec)
        if self.progress is not None:
            self.progress.update(0, acc=rec["test_accuracy"])
        if tally.final:
            self.final = rec
            scores = torch.cat([tally.scores[c] for c in sorted(tally.scores)])
            torch.save(scores, self.out / "eval_scores.pt")
        return rec

    def steady_rate(self) -> float | None:
        """samples/s between the 10 % and 90 % marks of the train stream: without process
        start-up, pipeline fill and drain, and the final evaluation."""
        if len(self.arrivals) < 10:
            return None
        (t0, s0), (t1, s1) = (self.arrivals[len(self.arrivals) // 10],
                              self.arrivals[len(self.arrivals) * 9 // 10])
        return (s1 - s0) / max(t1 - t0, 1e-9)

    def partial_final(self) -> dict:
        """The final evaluation with chunks lost in transit (a peer restarted mid-run):
        accuracy over the chunks that did arrive, and how many are missing."""
        for tally in self.tallies.values():
            if tally.final and tally.n:
                return {"test_accuracy": tally.correct / tally.n,
                        "eval_chunks_missing": tally.n_chunks - tally.chunks,
                        **({"head_accuracy": tally.head_correct / tally.n}
                           if self.head is not None else {})}
        return {}

    def finish(self, stages, interrupted: bool) -> dict:
        stages = [s for s in stages if isinstance(s, dict)] if isinstance(stages, list) else []
        last = self.final or self.partial_final() or (self.history[-1] if self.history else {})
        train_s = (self.t_last_train or time.time()) - self.run_start
        summary = {**base_summary(self.cfg), "transport": self.cfg.pipeline.transport,
                   "queue_policy": self.cfg.pipeline.queue_policy,
                   "test_accuracy": last.get("test_accuracy"),
                   "train_samples": self.samples,
                   "wall_seconds": time.time() - self.run_start, "train_seconds": train_s,
                   "samples_per_second": self.samples / max(train_s, 1e-9),
                   "steady_samples_per_second": self.steady_rate(),
                   "stages": [{k: v for k, v in s.items() if k != "drift"} for s in stages],
                   "drift": [s.get("drift", {}) for s in stages],
                   "cpu_seconds": {"source": self.source_stats.get("cpu_seconds"),
                                   "sink": time.process_time(),
                                   **{f"stage{s['stage']}": s.get("cpu_seconds")
                                      for s in stages}},
                   "interrupted": interrupted}
        for key in ("head_accuracy", "eval_chunks_missing"):
            if key in last:
                summary[key] = last[key]
        if stages:
            # Per layer, the whole run's samples (a resumed run counts what came before);
            # stage 0 has no upstream, so its staleness is exact by definition.
            summary["train_samples"] = min(s.get("samples", 0) for s in stages)
            summary["staleness_exact"] = all(s.get("staleness_exact", False)
                                             for s in stages[1:])
            summary["restarts"] = {f"stage {s['stage']}": s["restarts"] for s in stages
                                   if s.get("restarts")}
            summary["messages_lost"] = sum(s.get("gaps", 0) for s in stages)
            summary["pids"] = {"source": self.source_stats.get("pid"), "sink": os.getpid(),
                               **{f"stage {s['stage']}": s.get("pid") for s in stages}}
            if not summary["staleness_exact"]:
                log.warning("staleness was measured from version stamps only (no version "
                            "board reached): the values are lower bounds")
        if self.resumed_at:
            summary["resumed_at_step"] = self.resumed_at
        hard = self.source_stats.get("hard_negatives")
        if isinstance(hard, dict):
            summary["hard_negatives"] = {**hard,
                                         "feedback_sent": self.feedback_sent,
                                         "feedback_dropped": self.feedback_dropped}
        if self.head is not None:  # the run's model file takes the head from here
            checkpoint.save_module(self.out, "head", self.head)
        write_json_atomic(self.out / "summary.json", summary)
        return summary
