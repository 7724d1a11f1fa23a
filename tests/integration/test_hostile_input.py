"""Hostile input into a LIVE pipeline (`ffpipe train --transport zmq` on 127.0.0.1):
ten thousand bad messages of every kind sent into stage 1 while it trains are each
refused and counted, and the run computes exactly what a clean run computes; with
CURVE keys, a client without them gets nothing in at all.

The clean run is lockstep, in this process: for one config and seed a pipelined run
over lossless hops computes lockstep's weights bit for bit
(`test_schedules.test_pipelined_with_lossless_hops_computes_exactly_what_lockstep_computes`),
so nothing is stored or hard-coded: any effect a hostile message had on training
would show as a difference in the weights.
"""

from __future__ import annotations

import contextlib
import json
import time

import pytest
import torch
import zmq

from conftest import SYNTH, free_port_block, read_jsonl, trained, wait_for
from messages import hostile_messages
from pipeline import train
from pipeline.config import NetConfig
from pipeline.overrides import config_from_argv
from pipeline.transport.channel import LOG_EVERY, LOG_FIRST
from pipeline.transport.zmq_channel import endpoint_for
from pipeline.transport.zmq_keys import generate_keys, load_curve
from pipeline.wire import Message, encode

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

LAYERS = [64, 100, 100]  # two stages: stage 1 is attacked; its input is 100 wide
TARGET = 1
N_HOSTILE = 10_000
ATTACKERS = 100  # connections: a stage reads its peers in turn, one message from each
CHANCE = 0.1
# 320 steps: even if stage 1 always has a real input waiting, it reads ATTACKERS bad
# messages per real one, so the flood is all read in the first 100 steps or so.
EPOCHS = 5


def run_args(out, *extra) -> list[str]:
    return [*SYNTH, "--layers", ",".join(map(str, LAYERS)), "--epochs", str(EPOCHS),
            "--train.threads=1", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[dict, list[dict]]:
    """The clean run's summary and weights (lockstep, in this process)."""
    out = tmp_path_factory.mktemp("clean")
    summary = train(config_from_argv(run_args(out, "--schedule", "lockstep")))
    assert summary["test_accuracy"] > 5 * CHANCE  # the config learns
    return summary, weights(out)


def weights(out) -> list[dict]:
    return [torch.load(out / "ckpt" / f"stage{k}.pt", weights_only=True)["trainer"]["layer"]
            for k in range(len(LAYERS) - 1)]


def same_weights(a: list[dict], b: list[dict]) -> bool:
    return all(x[n].equal(y[n]) for x, y in zip(a, b) for n in x)


def train_records(out, k: int) -> list[dict]:
    path = out / f"stage{k}.jsonl"
    return [r for r in read_jsonl(path) if r["kind"] == "train"] if path.exists() else []


def starts(out, k: int) -> list[dict]:
    return [r for r in read_jsonl(out / f"stage{k}.jsonl") if r["kind"] == "start"]


@contextlib.contextmanager
def attacked_run(procs, out, *extra, curve_dirs=(None,)):
    """Start `ffpipe train --transport zmq` and, once stage TARGET trains, yield (the
    run, PUSH sockets connected to that stage's inbox: one per entry of `curve_dirs`,
    None for a plain zmq client, a folder for a CURVE client with the keys in it)."""
    base = free_port_block(len(LAYERS))
    run = procs.ffpipe(["train", *run_args(out, "--transport", "zmq", "--net.base_port",
                                           str(base), "--train.log_every=2", *extra)])
    ctx, socks = zmq.Context(), []
    try:
        for curve_dir in curve_dirs:
            s = ctx.socket(zmq.PUSH)
            socks.append(s)
            s.linger = 0
            if curve_dir is not None:
                keys = load_curve(curve_dir, "client")
                s.curve_publickey, s.curve_secretkey = keys.public, keys.secret
                s.curve_serverkey = keys.peer_public
            s.connect(endpoint_for(NetConfig(base_port=base), TARGET, len(LAYERS) - 1))
        # Training is under way (the stage has logged a step) before the first message.
        wait_for(lambda: trained(out, TARGET) or run.poll() is not None, 120,
                 f"stage {TARGET} to train", interval=0.01)
        if not trained(out, TARGET):
            pytest.fail(f"the run exited ({run.returncode}) before stage {TARGET} trained: "
                        f"{run.communicate()[1][-2000:]}")
        yield run, socks
    finally:
        for s in socks:
            s.close()
        ctx.term()


def flood(socks, messages, run, timeout: float) -> None:
    """Hand every message to zmq, spread over `socks` (the stage reads its peers in
    turn, so many connections get more of its time than one), which delivers them in
    order while the stage reads; fail if the run ends first or the stage stops reading
    for `timeout` seconds."""
    for i, frames in enumerate(messages):
        sock, deadline = socks[i % len(socks)], time.monotonic() + timeout
        while not sock.poll(100, zmq.POLLOUT):
            if run.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"stage {TARGET} stopped reading after {i} of {len(messages)} "
                            f"hostile messages (run exit code {run.poll()}); if the run "
                            f"ended, it was too short for the flood: give it more epochs")
        sock.send_multipart(frames)


def test_a_live_stage_refuses_and_counts_10000_hostile_messages_and_trains_as_if_none_came(
        procs, tmp_path, clean):
    clean_summary, clean_weights = clean
    messages, kinds = hostile_messages(N_HOSTILE, width=LAYERS[TARGET])
    out = tmp_path / "attacked"
    with attacked_run(procs, out, curve_dirs=[None] * ATTACKERS) as (p, socks):
        flood(socks, messages, p, timeout=30)
        _, err = p.communicate(timeout=120)  # zmq keeps delivering while the run goes on
    assert p.returncode == 0, err[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    stage = summary["stages"][TARGET]
    assert stage["rejected"] == N_HOSTILE, (
        f"{stage['rejected']} of {N_HOSTILE} counted: the run ended before stage "
        f"{TARGET} had read them all (kinds sent: {kinds})")
    assert summary["stages"][0]["rejected"] == 0
    assert summary["messages_lost"] == 0  # hostile sequence numbers fake no losses
    # The stage survived: one process from start to end, never restarted.
    assert len(starts(out, TARGET)) == 1
    assert starts(out, TARGET)[0]["pid"] == summary["pids"][f"stage {TARGET}"]
    # The counts are in its log too, and it went on training after bad input arrived.
    counts = [r["rejected"] for r in train_records(out, TARGET)]
    assert counts == sorted(counts) and counts[0] < N_HOSTILE and counts[-1] <= N_HOSTILE
    assert any(0 < c for c in counts[:-1]), counts
    # Nothing hostile touched training: lockstep's weights, bit for bit, hence the same
    # accuracy (the issue asks for within 1.5 points of a clean run; this is 0).
    assert abs(summary["test_accuracy"] - clean_summary["test_accuracy"]) <= 0.015
    assert same_weights(weights(out), clean_weights)
    # And the flood did not become a flood of log lines.
    assert err.count("rejected a message") <= LOG_FIRST + N_HOSTILE // LOG_EVERY
    wait_for(lambda: procs.alive() == [], 10, "every process to exit")


def test_with_curve_keys_a_client_without_them_gets_nothing_into_a_live_stage(
        procs, tmp_path, clean):
    _, clean_weights = clean
    keys, intruder = generate_keys(tmp_path / "keys")[0].parent, tmp_path / "intruder"
    generate_keys(intruder)
    (intruder / "server.key").write_bytes((keys / "server.key").read_bytes())

    out = tmp_path / "secured"
    # Valid messages that the stage WOULD train on, from a client with no CURVE at all
    # and from one with the server's public key but a client key it does not accept.
    good = Message("train", versions=[1], meta={"step": 0, "total": 10, "n": 4},
                   tensors={"pos": torch.rand(4, LAYERS[TARGET]),
                            "neg": torch.rand(4, LAYERS[TARGET])})
    with attacked_run(procs, out, "--net.curve_dir", str(keys),
                      curve_dirs=[None, intruder]) as (p, socks):
        deadline, queued = time.monotonic() + 3, 0
        while time.monotonic() < deadline:
            for s in socks:
                try:
                    s.send_multipart(encode(good), flags=zmq.NOBLOCK)
                    queued += 1
                except zmq.Again:  # no peer took them: nothing can even be queued
                    pass
            time.sleep(0.01)
        _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"][TARGET]["rejected"] == 0  # not even seen, let alone trained on
    assert summary["test_accuracy"] > 5 * CHANCE
    assert same_weights(weights(out), clean_weights), f"{queued} intruder messages queued"
    wait_for(lambda: procs.alive() == [], 10, "every process to exit")
