"""StoreChannel: messages through a key-value store, in order, never blocking the sender,
bounded, and hostile blobs refused without losing the stream."""

import msgpack
import pytest
import torch
import torch.distributed as dist

from pipeline.transport.store_channel import StoreChannel
from pipeline.wire import Message

pytestmark = pytest.mark.timeout(30)


def pair(capacity=8):
    store = dist.HashStore()
    return (StoreChannel(store, "t", max_bytes=1 << 20, capacity=capacity),
            StoreChannel(store, "t", max_bytes=1 << 20, capacity=capacity), store)


def scores(step: int) -> Message:
    return Message("scores", meta={"step": step},
                   tensors={"idx": torch.arange(3), "scores": torch.full((3, 10), float(step))})


def test_messages_arrive_in_order_with_their_tensors():
    tx, rx, _ = pair()
    for step in range(5):
        assert tx.send(scores(step), timeout=0)
    got = [rx.recv(timeout=0) for _ in range(5)]
    assert [m.meta["step"] for m in got] == list(range(5))
    assert torch.equal(got[3].tensors["scores"], torch.full((3, 10), 3.0))
    assert rx.recv(timeout=0) is None and rx.gaps == 0


def test_a_full_channel_refuses_instead_of_blocking_and_frees_up_as_the_receiver_takes():
    tx, rx, _ = pair(capacity=2)
    assert tx.send(scores(0), timeout=0) and tx.send(scores(1), timeout=0)
    assert not tx.send(scores(2), timeout=0)      # two wait untaken: refused at once
    assert rx.recv(timeout=0).meta["step"] == 0
    assert tx.send(scores(2), timeout=0)
    assert [rx.recv(timeout=0).meta["step"] for _ in range(2)] == [1, 2]
    assert tx.sent == 3                           # the refused send did not use a number


@pytest.mark.parametrize("blob", [b"\x00garbage", msgpack.packb({"a": 1}),
                                  msgpack.packb([b"\x81\xa1v\x09"]),
                                  msgpack.packb([[[[]]]])])
def test_a_hostile_blob_is_counted_and_the_next_message_still_arrives(blob):
    tx, rx, store = pair()
    store.set("ffpipe/t/0", blob)   # where the first message would go
    tx._next_seq = 1
    tx.send(scores(7), timeout=0)
    assert rx.recv(timeout=0) is None and rx.rejected == 1
    assert rx.recv(timeout=0).meta["step"] == 7
