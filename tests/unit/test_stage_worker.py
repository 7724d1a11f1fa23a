"""StageWorker in one process, driven through in-memory channels."""

from __future__ import annotations

import torch

from pipeline.config import load_config
from pipeline.runtime.flow import Flow
from pipeline.runtime.stage import StageWorker
from pipeline.transport.memory import MemoryChannel
from pipeline.wire import Message, ctrl


def cfg_for(tmp_path, *overrides):
    return load_config(None, [("model.layers", "8,6,4"), ("out", str(tmp_path)),
                              ("drift.probe_every", "0"), *overrides])


def train_msg(step: int, width: int = 8, rows: int = 5, versions=(), **meta) -> Message:
    m = {"step": step, "total": 100, "n": rows, **meta}
    return Message("train", versions=list(versions), meta=m,
                   tensors={"pos": torch.rand(rows, width), "neg": torch.rand(rows, width)})


def run_stage(tmp_path, k: int, messages, *overrides):
    inbox, outbox = MemoryChannel(messages + [ctrl("stop")]), MemoryChannel(keep=True)
    worker = StageWorker(k, cfg_for(tmp_path, *overrides), Flow(inbox, outbox, lambda: False))
    worker.run()
    return worker, inbox, outbox.out


def test_stage_rejects_wrong_content_counts_it_and_keeps_training(tmp_path):
    bad = [
        Message("train", meta={"step": 1}, tensors={}),                    # meta incomplete
        Message("train", meta={"step": 1, "total": 100, "n": 5},
                tensors={"pos": torch.rand(5, 8)}),                         # no negatives
        train_msg(2, width=7),                                              # wrong width
        Message("eval", meta={"eval_id": 0, "chunk": 3, "n_chunks": 2, "step": 0,
                              "final": False}, tensors={}),                 # chunk out of range
        Message("probe", meta={"step": 0}, tensors={"x": torch.rand(4)}),   # 1-d probe
    ]
    worker, inbox, out = run_stage(tmp_path, 0, bad + [train_msg(3)])
    assert inbox.rejected == len(bad)
    assert worker.trainer.version == 1  # the good message trained the layer
    trained = [m for m in out if m.kind == "train"]
    assert len(trained) == 1 and trained[0].tensors["pos"].shape == (5, 6)


def test_forwarded_messages_carry_every_upstream_version_plus_this_stages(tmp_path):
    msgs = [train_msg(s, width=6, versions=[10 + s]) for s in range(3)]
    _, _, out = run_stage(tmp_path, 1, msgs)
    versions = [m.versions for m in out if m.kind == "train"]
    assert versions == [[10, 1], [11, 2], [12, 3]]


def test_latest_policy_trains_on_the_freshest_input_and_counts_the_drops(tmp_path):
    msgs = [train_msg(s) for s in range(6)]
    worker, _, out = run_stage(tmp_path, 0, msgs, ("pipeline.queue_policy", "latest"))
    assert worker.drops == 5 and worker.trainer.version == 1
    assert [m.meta["step"] for m in out if m.kind == "train"] == [5]
    assert out[-1].kind == "ctrl"  # the stop is never dropped


def test_max_staleness_discards_inputs_from_upstream_versions_too_old(tmp_path):
    # The newest stamp seen from stage 0 is 20; inputs stamped 5 are 15 updates old.
    msgs = [train_msg(0, width=6, versions=[20]), train_msg(1, width=6, versions=[5]),
            train_msg(2, width=6, versions=[19])]
    worker, _, out = run_stage(tmp_path, 1, msgs, ("pipeline.max_staleness", "3"))
    assert worker.stale_drops == 1 and worker.trainer.version == 2


def test_replay_mixes_buffered_rows_into_training_but_forwards_only_fresh_ones(tmp_path):
    msgs = [train_msg(s) for s in range(4)]
    worker, _, out = run_stage(tmp_path, 0, msgs, ("pipeline.replay", "50"))
    assert worker.replay.size == 20
    assert all(m.tensors["pos"].shape == (5, 6) for m in out if m.kind == "train")


def test_stop_checkpoints_and_a_resumed_stage_continues_from_that_version(tmp_path):
    worker, _, _ = run_stage(tmp_path, 0, [train_msg(s) for s in range(4)])
    saved = {k: v.clone() for k, v in worker.trainer.layer.state_dict().items()}
    again, _, _ = run_stage(tmp_path, 0, [], ("pipeline.resume", "true"))
    assert again.trainer.version == 4
    for k, v in again.trainer.layer.state_dict().items():
        assert torch.equal(v, saved[k])


def test_a_refused_message_changes_nothing_not_the_weights_the_staleness_nor_the_stage(
        tmp_path):
    # Stage 1 (one upstream stamp per message). Each bad message is refused before it
    # can touch anything: huge stamps on a message with the wrong width would otherwise
    # poison the version board (every later input would look 10^12 updates old), extra
    # stamps would crash the staleness sums, and a head row count that does not match
    # would be found only after the layer had stepped.
    good = [train_msg(s, width=6, versions=[s + 1]) for s in range(4)]
    head = train_msg(9, width=6, versions=[9])
    head.tensors.update(neutral=torch.rand(5, 6), y=torch.zeros(3, dtype=torch.int64))
    bad = [train_msg(7, width=5, versions=[10 ** 12]),                 # wrong width
           train_msg(8, width=6, versions=[1, 2, 3]),                   # 3 stamps at stage 1
           Message("probe", versions=[], meta={"step": 0}, tensors={"x": torch.rand(4, 6)}),
           head]                                                        # 3 labels for 5 rows
    clean, _, clean_out = run_stage(tmp_path / "clean", 1, good,
                                    ("pipeline.max_staleness", "3"))
    mixed, inbox, out = run_stage(tmp_path / "mixed", 1, good[:2] + bad + good[2:],
                                  ("pipeline.max_staleness", "3"))
    assert inbox.rejected == len(bad)
    assert mixed.stale_drops == clean.stale_drops == 0
    assert mixed.trainer.version == clean.trainer.version == len(good)
    assert mixed.stale_total == clean.stale_total
    for k, v in mixed.trainer.layer.state_dict().items():
        assert torch.equal(v, clean.trainer.layer.state_dict()[k]), k
    assert [m.versions for m in out] == [m.versions for m in clean_out]


def test_every_kind_of_hostile_message_is_refused_by_the_codec_or_by_the_stage(tmp_path):
    # What tests/integration/test_hostile_input.py floods a live stage with, in one process:
    # each message is refused exactly once, and none reaches the layer.
    from messages import hostile_messages
    from pipeline.wire import WireError, decode
    messages, kinds = hostile_messages(2000, width=6)
    assert all(kinds.values())
    decoded, by_codec = [], 0
    for frames in messages:
        try:
            decoded.append(decode(frames, 1 << 20))
        except WireError:
            by_codec += 1
    worker, inbox, out = run_stage(tmp_path, 1, decoded)
    assert by_codec + inbox.rejected == len(messages)
    assert by_codec and inbox.rejected  # both lines of defence were exercised
    assert worker.trainer.version == 0 and [m.kind for m in out] == ["ctrl"]


def train_records(tmp_path, k: int) -> list[dict]:
    import json
    lines = (tmp_path / f"stage{k}.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_the_log_never_ends_in_an_empty_record_and_report_md_agrees_with_the_summary(
        tmp_path):
    from pipeline.drift.report import make_report
    # Stamps out of order, so stage 1 sees staleness 0, 6, 0, 5, 0 over five steps.
    stamps = [10, 4, 12, 7, 15]
    msgs = [train_msg(s, width=6, versions=[v]) for s, v in enumerate(stamps)]
    run_stage(tmp_path / "even", 1, msgs[:4], ("train.log_every", "2"))
    assert [r["step"] for r in train_records(tmp_path / "even", 1)] == [2, 4]  # none at stop
    worker, _, _ = run_stage(tmp_path / "odd", 1, msgs, ("train.log_every", "2"))
    records = train_records(tmp_path / "odd", 1)
    assert [r["step"] for r in records] == [2, 4, 5]  # the stop reports the one step left
    assert all(r["samples_per_s"] > 0 and r["loss"] > 0 for r in records)
    summary = worker.final_stats()["mean_staleness"]
    assert summary == sum([0, 6, 0, 5, 0]) / 5
    make_report(tmp_path / "odd")
    row = [line for line in (tmp_path / "odd" / "report.md").read_text().splitlines()
           if line.startswith("| 1 |")][0]
    assert f"| {summary:.4g} |" in row, row
