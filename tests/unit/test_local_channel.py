"""The local shared-memory channel driven from one process (send, then recv, same
process): ring order, slot reuse, the oversize path, timeouts, and hostile slots."""

import copy

import msgpack
import pytest
import torch

from messages import CAP, frames_with, good_parts, random_bits, same_bits
from pipeline.transport.local import OVERSIZE, ShmChannel, _layout
from pipeline.wire import Message

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def channel():
    ctx = torch.multiprocessing.get_context("spawn")
    made = []

    def make(slots=2, message_bytes=1024, max_bytes=CAP):
        ch = ShmChannel(ctx, slots=slots, message_bytes=message_bytes, max_bytes=max_bytes)
        made.append(ch)
        return ch

    yield make
    for ch in made:
        ch.close()


def slots_all_free(ch) -> bool:
    """No slot leaked or handed back twice: the free count is back to the ring size."""
    return ch.free.get_value() == ch.slots and ch.full.get_value() == 0


def test_shm_round_trip_in_one_process(channel):
    ch = channel()
    x = random_bits(torch.float32, [4, 7])
    y = torch.tensor([3, 1, 4, 1])
    for i in range(5):  # more messages than slots: slots are handed back and reused
        assert ch.send(Message(kind="train", versions=[i, 2 * i], meta={"i": i},
                               tensors={"x": x + 0 if i else x, "y": y}), timeout=5)
        got = ch.recv(timeout=5)
        assert got is not None and got.seq == i
        assert (got.versions, got.meta) == ([i, 2 * i], {"i": i})
        assert same_bits(got.tensors["x"], x) and got.tensors["y"].tolist() == [3, 1, 4, 1]
    assert (ch.sent, ch.received, ch.rejected, ch.gaps, ch.oversize) == (5, 5, 0, 0, 0)
    assert slots_all_free(ch)


def test_shm_keeps_order_when_the_ring_wraps(channel):
    ch = channel(slots=3)
    for i in range(3):
        assert ch.send(Message(kind="train", meta={"i": i}, tensors={"x": torch.full((2,), i)}),
                       timeout=5)
    assert ch.depth() == 3
    for i in range(3, 8):  # one out, one in: every slot position is reused
        assert ch.recv(timeout=5).meta == {"i": i - 3}
        assert ch.send(Message(kind="train", meta={"i": i}, tensors={"x": torch.full((2,), i)}),
                       timeout=5)
    assert [ch.recv(timeout=5).tensors["x"][0].item() for _ in range(3)] == [5, 6, 7]
    assert slots_all_free(ch)


def test_shm_received_tensor_does_not_alias_the_slot(channel):
    ch = channel(slots=1)
    ch.send(Message(kind="train", tensors={"x": torch.ones(4)}), timeout=5)
    first = ch.recv(timeout=5)
    ch.send(Message(kind="train", tensors={"x": torch.full((4,), 9.0)}), timeout=5)
    ch.recv(timeout=5)
    assert first.tensors["x"].tolist() == [1.0] * 4  # slot reuse did not overwrite it


def test_shm_message_larger_than_a_slot_takes_the_oversize_path_in_order(channel):
    ch = channel(slots=2, message_bytes=256)
    big = random_bits(torch.float32, [64, 64])  # 16 KiB > slot
    assert ch.send(Message(kind="train", meta={"i": 0}, tensors={"x": torch.ones(2)}), timeout=5)
    assert ch.send(Message(kind="eval", versions=[7], tensors={"big": big}), timeout=5)
    assert ch.recv(timeout=5).meta == {"i": 0}
    got = ch.recv(timeout=5)
    assert ch.oversize == 1
    assert same_bits(got.tensors["big"], big) and got.versions == [7]
    assert slots_all_free(ch)


def test_shm_send_times_out_when_every_slot_is_in_flight(channel):
    ch = channel(slots=1)
    assert ch.send(Message(kind="train", tensors={"x": torch.ones(2)}), timeout=5)
    assert ch.send(Message(kind="train", tensors={"x": torch.ones(2)}), timeout=0.2) is False
    assert ch.sent == 1
    assert ch.recv(timeout=5).seq == 0
    assert ch.recv(timeout=0.2) is None
    assert ch.recv(timeout=0) is None


def post_raw(ch, header_len: int, sizes: list[int], header: bytes = b"", count=None):
    """Write a slot by hand, as a misbehaving sender would: any prefix, any header."""
    assert ch.free.acquire(True, 5)
    slot = ch.arena[(ch._w % ch.slots) * ch.slot_bytes:][:ch.slot_bytes]
    ch._w += 1
    prefix = slot[:16 + 8 * len(sizes)].view("uint64")
    prefix[:2] = (header_len, len(sizes) if count is None else count)
    prefix[2:] = sizes
    at = _layout(0, sizes)[0]  # where the header starts does not depend on its length
    slot[at: at + len(header)] = list(header)
    ch.full.release()


def good_parts_header() -> bytes:
    return msgpack.packb(good_parts()[0])


def cap_header() -> bytes:
    return frames_with(tensors=[{"name": "x", "dtype": "uint8", "shape": [2 ** 40]}])[0]


@pytest.mark.parametrize("hostile", [
    lambda ch: post_raw(ch, 5, [4], b"\xc1junk"),                                 # not msgpack
    lambda ch: post_raw(ch, 20, [], msgpack.packb({"v": 99, "kind": "train"})),   # version
    lambda ch: post_raw(ch, 1, [10 ** 9], b"\x80"),                              # sizes > slot
    lambda ch: post_raw(ch, 2 ** 40, [4]),                                       # header > slot
    lambda ch: post_raw(ch, 1, [4], b"\x80", count=2 ** 60),                     # count
    lambda ch: post_raw(ch, len(cap_header()), [8], cap_header()),              # cap
    lambda ch: post_raw(ch, len(good_parts_header()), [5], good_parts_header()),  # wrong len
    lambda ch: (post_raw(ch, OVERSIZE, []), ch.side_w.send_bytes(b"garbage")),  # body
    lambda ch: post_raw(ch, OVERSIZE, []),                                # body never comes
])
def test_shm_hostile_slot_is_rejected_counted_and_next_message_arrives(channel, hostile,
                                                                        monkeypatch):
    monkeypatch.setattr("pipeline.transport.local.SIDE_WAIT_S", 0.2)
    ch = channel(slots=2)
    hostile(ch)
    ch.send(Message(kind="train", versions=[1], tensors={"x": torch.arange(3.0)}), timeout=5)
    got = ch.recv(timeout=5)
    assert got is not None and got.tensors["x"].tolist() == [0.0, 1.0, 2.0]
    assert ch.rejected == 1 and ch.received == 1
    assert slots_all_free(ch)


def end(hop):
    """Another process's end of the same hop (what spawn hands a child)."""
    return copy.copy(hop)


def two_generations() -> ShmChannel:
    return ShmChannel(torch.multiprocessing.get_context("spawn"), slots=4, message_bytes=256,
                      max_bytes=CAP, generations=2)


def test_a_replaced_sender_continues_and_the_receiver_takes_what_the_dead_one_posted():
    hop = two_generations()
    sender, receiver = end(hop), end(hop)
    for i in range(2):
        assert sender.send(Message(kind="train", meta={"i": i}), timeout=5)
    del sender                                  # it dies; the launcher starts another
    assert hop.replace_end()
    again = end(hop)
    assert again.send(Message(kind="train", meta={"i": 2}), timeout=5)
    got = [receiver.recv(timeout=5) for _ in range(3)]
    assert [m.meta["i"] for m in got] == [0, 1, 2] and [m.seq for m in got] == [0, 1, 2]
    assert receiver.gaps == 0


def test_a_replaced_receiver_gets_new_messages_and_counts_the_lost_ones_as_gaps():
    hop = two_generations()
    sender, receiver = end(hop), end(hop)
    for i in range(3):
        assert sender.send(Message(kind="train", meta={"i": i}), timeout=5)
    assert receiver.recv(timeout=5).meta == {"i": 0}
    del receiver                     # dies holding messages 1 and 2, never read
    assert hop.replace_end()
    again = end(hop)
    assert sender.send(Message(kind="train", meta={"i": 3}), timeout=5)
    got = again.recv(timeout=5)
    assert got.meta == {"i": 3} and again.gaps == 2
    assert not hop.replace_end()     # no spare ring left: the launcher gives up instead


def test_a_sender_that_dies_mid_message_leaves_nothing_half_written_to_read():
    hop = two_generations()
    sender, receiver = end(hop), end(hop)
    assert sender.send(Message(kind="train", meta={"i": 0}), timeout=5)
    # It takes the next free slot and has written half a message when it dies.
    assert sender.free.acquire(True, 5)
    slot = sender.arena[sender._w % sender.slots * sender.slot_bytes:][:sender.slot_bytes]
    slot[: len(slot) // 2] = 0xAB
    del sender
    assert hop.replace_end()
    assert end(hop).send(Message(kind="train", meta={"i": 1}), timeout=5)
    got = [receiver.recv(timeout=5) for _ in range(2)]
    assert [m.meta["i"] for m in got] == [0, 1]
    assert (receiver.rejected, receiver.gaps) == (0, 0)  # nothing read, nothing lost
    assert receiver.recv(timeout=0.1) is None


def test_a_receiver_that_dies_mid_message_counts_it_lost_even_before_its_first_message():
    hop = two_generations()
    sender, receiver = end(hop), end(hop)
    for i in range(2):
        assert sender.send(Message(kind="train", meta={"i": i}), timeout=5)
    assert receiver.full.acquire(True, 5)  # it has taken message 0 and dies reading it
    del receiver
    assert hop.replace_end()
    again = end(hop)
    assert sender.send(Message(kind="train", meta={"i": 2}), timeout=5)
    got = again.recv(timeout=5)
    assert got.meta == {"i": 2} and again.gaps == 2  # messages 0 and 1 never arrived
