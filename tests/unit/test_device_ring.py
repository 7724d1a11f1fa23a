"""DeviceRingChannel: tensors on the ring's device travel through the device twin (no
host copy), host tensors through the host slot, in one ordered stream, across processes.
Run with device="cpu" here: the same code path a CUDA hop takes, minus the device.
"""

import multiprocessing as mp

import numpy as np
import pytest
import torch

from pipeline.transport.device_ring import DEVICE, DeviceRingChannel
from pipeline.wire import Message

pytestmark = pytest.mark.timeout(240)
CTX = mp.get_context("spawn")


def ring(slots=2, size=1 << 16):
    return DeviceRingChannel(CTX, slots, size, 1 << 20, device="cpu")


def msg(i: int, on_host: bool = False) -> Message:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4) + i
    return Message("train", meta={"step": i, "total": 100, "n": 3},
                   tensors={"pos": t, "neg": -t, "y": torch.arange(3)})


def test_device_tensors_skip_the_host_slot_and_arrive_equal():
    ch = ring()
    assert ch.send(msg(0), timeout=1)
    slot = ch.arena[: ch.slot_bytes]
    assert int(slot[8:16].view(np.uint64)[0]) & DEVICE    # marked: bytes in the twin
    assert ch.device_bytes == 2 * 48 + 24 and ch.host_bytes == 0
    got = ch.recv(timeout=1)
    assert torch.equal(got.tensors["pos"], msg(0).tensors["pos"])
    assert torch.equal(got.tensors["y"], torch.arange(3)) and got.meta["step"] == 0


def test_received_tensors_are_copies_the_next_message_cannot_overwrite():
    ch = ring(slots=1)
    ch.send(msg(0), timeout=1)
    first = ch.recv(timeout=1)
    ch.send(msg(5), timeout=1)                              # reuses the only slot
    assert torch.equal(first.tensors["pos"], msg(0).tensors["pos"])
    assert torch.equal(ch.recv(timeout=1).tensors["pos"], msg(5).tensors["pos"])


def test_a_lying_device_slot_is_refused_and_the_stream_goes_on():
    ch = ring()
    ch.send(msg(0), timeout=1)
    slot = ch.arena[: ch.slot_bytes]
    slot[16:24].view(np.uint64)[0] = 10 ** 9                 # first buffer: a huge size
    assert ch.recv(timeout=0.2) is None and ch.rejected == 1
    ch.send(msg(1), timeout=1)
    assert ch.recv(timeout=1).meta["step"] == 1


def _echo(inbox, outbox):
    for _ in range(3):
        m = inbox.recv(timeout=120)
        outbox.send(Message(m.kind, meta=m.meta,
                            tensors={k: v * 2 for k, v in m.tensors.items()}), timeout=20)


def test_two_processes_share_the_twin_in_order():
    there, back = ring(slots=4), ring(slots=4)  # room for all three: no wait on start-up
    p = CTX.Process(target=_echo, args=(there, back))
    p.start()
    try:
        for i in range(3):
            assert there.send(msg(i), timeout=0)
        for i in range(3):
            got = back.recv(timeout=120)
            assert got.meta["step"] == i
            assert torch.equal(got.tensors["neg"], -2 * msg(i).tensors["pos"])
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
    assert p.exitcode == 0 and back.gaps == 0


def test_only_hops_between_two_cuda_stages_get_a_device_ring(monkeypatch):
    from pipeline.config import load_config
    from pipeline.processes import local

    made = []
    monkeypatch.setattr(local, "DeviceRingChannel",
                        lambda *a, device: made.append(device) or f"ring on {device}")
    cfg = load_config(None, [("model.layers", "8,8,8,8"),
                             ("pipeline.devices", "cuda:0,cuda:1,cpu")])
    kinds = [local.hop_channel(CTX, cfg, k, 1 << 12) for k in range(4)]
    assert kinds[1] == "ring on cuda:1" and made == ["cuda:1"]  # stage 0 -> stage 1 only
    assert all(isinstance(c, local.ShmChannel) for i, c in enumerate(kinds) if i != 1)
    cfg.pipeline.device_hops = "off"
    assert isinstance(local.hop_channel(CTX, cfg, 1, 1 << 12), local.ShmChannel)
