"""ZmqChannel: round trips over tcp and ipc, hostile input, start order, gaps, CURVE, HWM.

Sender and receiver sockets live in this one process; every socket is closed by the
fixtures, and every recv has a timeout, so a broken channel fails instead of hanging.
"""

import shutil
import socket
import time

import msgpack
import pytest
import torch
import zmq

from pipeline.config import NetConfig
from pipeline.errors import ConfigError, UserError
from pipeline.transport.zmq_channel import ZmqChannel, endpoint_for
from pipeline.transport.zmq_keys import generate_keys, load_curve
from pipeline.wire import Message, encode

pytestmark = pytest.mark.timeout(30)
MAX = 1 << 24
TIMEOUT = 5.0


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def opened():
    """Open channels through `opened(...)`; all are closed at teardown."""
    channels = []

    def open_(factory, endpoint, **kw):
        kw.setdefault("hwm", 4)
        kw.setdefault("max_bytes", MAX)
        ch = factory(endpoint, **kw)
        channels.append(ch)
        return ch

    yield open_
    for ch in channels:
        ch.close()


@pytest.fixture
def raw_push():
    """A plain zmq PUSH socket, as a hostile or foreign peer would use."""
    ctx = zmq.Context()
    socks = []

    def connect(endpoint):
        s = ctx.socket(zmq.PUSH)
        s.linger = 0
        s.connect(endpoint)
        socks.append(s)
        return s

    yield connect
    for s in socks:
        s.close()
    ctx.term()


def mixed_message() -> Message:
    return Message(kind="train", versions=[3, 7], meta={"step": 42, "note": "hi"}, tensors={
        "f32": torch.randn(64, 300),
        "f16": torch.randn(5, 7).half(),
        "bf16": torch.randn(3, 1000).bfloat16(),
        "i64": torch.arange(-5, 5, dtype=torch.int64).reshape(2, 5),
        "u8": torch.randint(0, 256, (17,), dtype=torch.uint8),
        "strided": torch.randn(8, 6).t(),  # non-contiguous: sent as a contiguous copy
        "empty": torch.empty(0, 4),
    })


@pytest.fixture(params=["tcp", "ipc"])
def endpoint(request, tmp_path):
    return free_tcp_endpoint() if request.param == "tcp" else f"ipc://{tmp_path}/hop0.sock"


def test_round_trip_keeps_every_dtype_shape_and_value(opened, endpoint):
    rx = opened(ZmqChannel.receiver, endpoint)
    tx = opened(ZmqChannel.sender, endpoint)
    sent = mixed_message()
    expected = {k: v.clone() for k, v in sent.tensors.items()}
    assert tx.send(sent, timeout=TIMEOUT)
    got = rx.recv(timeout=TIMEOUT)
    assert got is not None
    assert (got.kind, got.versions, got.meta, got.seq) == ("train", [3, 7],
                                                          {"step": 42, "note": "hi"}, 0)
    assert list(got.tensors) == list(expected)
    for name, t in expected.items():
        assert got.tensors[name].dtype == t.dtype, name
        assert torch.equal(got.tensors[name], t), name
    assert (tx.sent, rx.received, rx.rejected, rx.gaps) == (1, 1, 0, 0)


def test_large_message_is_tracked_until_sent_then_released(opened, endpoint):
    rx = opened(ZmqChannel.receiver, endpoint)
    tx = opened(ZmqChannel.sender, endpoint)
    x = torch.randn(1 << 20)  # 4 MiB: over the copy threshold, so sent zero-copy
    assert tx.send(Message(kind="train", tensors={"x": x}), timeout=TIMEOUT)
    got = rx.recv(timeout=TIMEOUT)
    assert torch.equal(got.tensors["x"], x)
    assert tx.wait_sent(timeout=TIMEOUT) and tx.in_flight() == 0


def header(**over) -> bytes:
    h = {"v": 1, "kind": "train", "seq": 0, "versions": [], "meta": {},
         "tensors": [{"name": "x", "dtype": "float32", "shape": [4]}]}
    h.update(over)
    return msgpack.packb(h, use_bin_type=True)


HOSTILE = {
    "bad msgpack": [b"\xc1\xc1 not msgpack", b"\0" * 16],
    "wrong kind": [header(kind="exec"), b"\0" * 16],
    "bad dtype": [header(tensors=[{"name": "x", "dtype": "object", "shape": [4]}]),
                  b"\0" * 16],
    "byte-length mismatch": [header(), b"\0" * 15],
    "oversize declared shape": [header(tensors=[{"name": "x", "dtype": "float32",
                                                 "shape": [1 << 40]}]), b"\0" * 16],
    "too many frames": [header()] + [b"\0" * 16] * 40,
}


def test_hostile_messages_are_rejected_counted_and_the_next_good_one_arrives(
        opened, raw_push, endpoint):
    rx = opened(ZmqChannel.receiver, endpoint)
    push = raw_push(endpoint)
    for frames in HOSTILE.values():
        push.send_multipart(frames)
    good = torch.arange(4, dtype=torch.float32)
    push.send_multipart([bytes(f) for f in encode(Message(kind="eval", tensors={"x": good}))])
    got = rx.recv(timeout=TIMEOUT)
    assert got is not None and got.kind == "eval"
    assert torch.equal(got.tensors["x"], good)
    assert rx.rejected == len(HOSTILE)
    assert rx.received == 1


def test_receiver_started_after_sender_still_gets_the_queued_messages(opened, endpoint):
    tx = opened(ZmqChannel.sender, endpoint)
    for i in range(3):
        assert tx.send(Message(kind="train", meta={"i": i}), timeout=TIMEOUT)
    time.sleep(0.3)  # the sender is already retrying its connection
    rx = opened(ZmqChannel.receiver, endpoint)
    got = [rx.recv(timeout=TIMEOUT) for _ in range(3)]
    assert [m.meta["i"] for m in got] == [0, 1, 2]
    assert [m.seq for m in got] == [0, 1, 2]


def test_skipped_sequence_numbers_are_counted_as_gaps(opened, raw_push, endpoint):
    rx = opened(ZmqChannel.receiver, endpoint)
    push = raw_push(endpoint)
    for seq in (0, 1, 5, 6):  # 2, 3, 4 lost in transit
        push.send_multipart(encode(Message(kind="train", seq=seq)))
    assert [rx.recv(timeout=TIMEOUT).seq for _ in range(4)] == [0, 1, 5, 6]
    assert rx.gaps == 3 and rx.received == 4


def test_recv_returns_none_after_its_timeout_when_nothing_comes(opened, endpoint):
    rx = opened(ZmqChannel.receiver, endpoint)
    t0 = time.monotonic()
    assert rx.recv(timeout=0.2) is None
    assert 0.15 <= time.monotonic() - t0 < 2.0


def test_send_with_full_hwm_and_no_receiver_returns_false_after_the_timeout(opened):
    tx = opened(ZmqChannel.sender, free_tcp_endpoint(), hwm=2)
    accepted = 0
    while True:
        t0 = time.monotonic()
        if not tx.send(Message(kind="train"), timeout=0.2):
            break
        accepted += 1
        assert accepted < 20, "the high-water mark never pushed back"
    assert time.monotonic() - t0 >= 0.15
    assert accepted >= 2  # the queue of hwm messages filled first
    assert tx.sent == accepted  # the refused message gave its seq back


@pytest.fixture
def keys(tmp_path):
    return generate_keys(tmp_path / "keys")[0].parent


def test_curve_round_trip_with_generated_keys(opened, endpoint, keys):
    assert {p.name for p in keys.iterdir()} == {"server.key", "server.key_secret",
                                                "client.key", "client.key_secret"}
    rx = opened(ZmqChannel.receiver, endpoint, curve=keys)
    tx = opened(ZmqChannel.sender, endpoint, curve=keys)
    x = torch.randn(100, 100)
    assert tx.send(Message(kind="train", tensors={"x": x}), timeout=TIMEOUT)
    got = rx.recv(timeout=TIMEOUT)
    assert got is not None and torch.equal(got.tensors["x"], x)


def test_curve_receiver_lets_nothing_through_from_wrong_or_missing_client_keys(
        opened, raw_push, endpoint, keys, tmp_path):
    impostor = tmp_path / "impostor"
    generate_keys(impostor)
    shutil.copy(keys / "server.key", impostor / "server.key")  # right server, wrong client
    rx = opened(ZmqChannel.receiver, endpoint, curve=keys)
    wrong = opened(ZmqChannel.sender, endpoint, curve=impostor)
    assert wrong.send(Message(kind="train"), timeout=TIMEOUT)  # queued, never delivered
    raw_push(endpoint).send_multipart(encode(Message(kind="train")))  # no CURVE at all
    assert rx.recv(timeout=1.5) is None
    assert rx.received == 0


def test_missing_curve_keys_say_to_run_ffpipe_keys(tmp_path, opened):
    with pytest.raises(UserError, match=r"run `ffpipe keys .*`") as exc:
        opened(ZmqChannel.receiver, free_tcp_endpoint(), curve=tmp_path / "nokeys")
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="ffpipe keys"):
        load_curve(tmp_path / "nokeys", "client")


def test_binding_a_busy_endpoint_is_a_one_line_user_error(opened):
    ep = free_tcp_endpoint()
    opened(ZmqChannel.receiver, ep)
    with pytest.raises(UserError, match="cannot listen on"):
        opened(ZmqChannel.receiver, ep)


def test_endpoint_for_prefers_explicit_then_ipc_then_tcp():
    assert endpoint_for(NetConfig(base_port=5600), 0, 3) == "tcp://127.0.0.1:5601"
    assert endpoint_for(NetConfig(base_port=5600), 3, 3) == "tcp://127.0.0.1:5604"
    assert endpoint_for(NetConfig(ipc_dir="/tmp/ff"), 2, 3) == "ipc:///tmp/ff/hop2.sock"
    eps = [f"tcp://stage{i}:7000" for i in range(4)]
    assert endpoint_for(NetConfig(endpoints=eps, ipc_dir="/tmp/ff"), 1, 3) == eps[1]
    with pytest.raises(ConfigError, match="one per receiver"):
        endpoint_for(NetConfig(endpoints=eps[:2]), 0, 3)
    # hop K+1: the source's feedback inbox (hard negatives), after the sink's
    assert endpoint_for(NetConfig(base_port=5600), 4, 3) == "tcp://127.0.0.1:5605"
    with pytest.raises(ConfigError, match="feedback inbox"):
        endpoint_for(NetConfig(endpoints=eps), 4, 3)
    assert endpoint_for(NetConfig(endpoints=eps + ["tcp://source:7000"]), 4, 3) == \
        "tcp://source:7000"
    with pytest.raises(ValueError):
        endpoint_for(NetConfig(), 5, 3)


def test_a_refused_messages_sequence_number_does_not_count_as_lost_messages(
        opened, raw_push, endpoint):
    # Anyone who reaches the socket picks the seq of what they send: a message the role
    # refuses (well-formed bytes, wrong content) must not make real ones look lost.
    rx = opened(ZmqChannel.receiver, endpoint)
    push = raw_push(endpoint)
    stream = [(0, False), (10 ** 9, True), (1, False), (0, True), (2, False)]  # (seq, intruder)
    for seq, _ in stream:
        push.send_multipart(encode(Message(kind="train", seq=seq)))
    for seq, intruder in stream:
        got = rx.recv(timeout=TIMEOUT)
        assert got.seq == seq
        if intruder:
            rx.reject("content refused by the role", got)
    assert (rx.gaps, rx.received, rx.rejected) == (0, 3, 2)


def test_a_flood_of_bad_messages_is_counted_exactly_but_logged_sparingly(caplog):
    from pipeline.transport.channel import LOG_EVERY, LOG_FIRST
    from pipeline.transport.memory import MemoryChannel
    ch, n = MemoryChannel(), 3 * LOG_EVERY
    with caplog.at_level("WARNING", logger="pipeline.transport.channel"):
        for i in range(n):
            ch.reject(f"bad {i}")
    assert ch.rejected == n
    assert LOG_FIRST < len(caplog.records) <= LOG_FIRST + n // LOG_EVERY  # not one per message
    assert f"({n} rejected so far)" in caplog.records[-1].getMessage()
