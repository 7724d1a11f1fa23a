"""The time-to-accuracy benchmark reads the first evaluation at or above each target
from a recorded sink.jsonl."""

from pipeline.bench.accuracy_bench import time_to_targets
from pipeline.runlog import JsonlWriter, read_jsonl


def test_time_to_target_is_the_first_eval_at_or_above_it(tmp_path):
    path = tmp_path / "sink.jsonl"
    log = JsonlWriter(path)
    for time, acc in [(10.0, 0.90), (20.0, 0.951), (30.0, 0.949), (40.0, 0.96), (50.0, 0.958)]:
        log.write({"kind": "eval", "step": int(time), "time": time, "test_accuracy": acc})
    log.write({"kind": "train", "time": 5.0, "test_accuracy": 0.99})  # not an evaluation
    log.close()
    got = time_to_targets(read_jsonl(path), [0.9, 0.95, 0.96, 0.97])
    assert got == {0.9: 10.0, 0.95: 20.0, 0.96: 40.0, 0.97: None}
