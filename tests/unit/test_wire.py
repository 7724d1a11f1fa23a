"""Wire format: bit-exact round trips, every rejection rule, no pickle anywhere, and the
local shared-memory channel driven from one process (send, then recv, same process).
"""

import ast
import pickle
from pathlib import Path

import msgpack
import pytest
import torch

import pipeline.wire as wire
from pipeline.transport.local import OVERSIZE, ShmChannel, _layout
from pipeline.wire import Message, WireError, ctrl, decode, encode

pytestmark = pytest.mark.timeout(30)
CAP = 1 << 20
G = torch.Generator().manual_seed(0)


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes, so NaN payloads and -0.0 compare exactly."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b))


def random_bits(dtype: torch.dtype, shape) -> torch.Tensor:
    """Every bit pattern is fair game (NaNs, infinities, subnormals) for float types."""
    n = int(torch.tensor(shape).prod()) if shape else 1
    raw = torch.randint(0, 256, (n * torch.empty(0, dtype=dtype).element_size(),),
                        dtype=torch.uint8, generator=G)
    return raw.view(dtype).reshape(shape)


def round_trip(msg: Message, max_bytes: int = CAP) -> Message:
    # bytes(): what a socket hands the receiver, no memory shared with the sender
    return decode([bytes(f) for f in encode(msg)], max_bytes)


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16,
                                   torch.float64, torch.int64, torch.int32, torch.uint8])
def test_round_trip_is_bit_exact(dtype):
    t = random_bits(dtype, [7, 5])
    got = round_trip(Message(kind="train", tensors={"t": t})).tensors["t"]
    assert same_bits(got, t)


def test_round_trip_keeps_special_float_values():
    t = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf"), 1e-45, 3.4e38])
    got = round_trip(Message(kind="eval", tensors={"t": t})).tensors["t"]
    assert same_bits(got, t)
    assert str(got[1].item()) == "-0.0"


def test_round_trip_bool_and_int64_extremes():
    b = torch.tensor([[True, False, True], [False, False, True]])
    i = torch.tensor([-(2 ** 63), -1, 0, 2 ** 63 - 1])
    got = round_trip(Message(kind="train", tensors={"b": b, "i": i})).tensors
    assert same_bits(got["b"], b) and got["b"].tolist() == b.tolist()
    assert got["i"].tolist() == i.tolist()


@pytest.mark.parametrize("shape", [[], [0], [0, 5], [3, 0, 2], [2, 3, 4], [1, 1, 1, 1, 2]])
def test_round_trip_preserves_shapes_including_empty_and_scalar(shape):
    t = random_bits(torch.float32, shape) if 0 not in shape else torch.empty(shape)
    got = round_trip(Message(kind="probe", tensors={"t": t})).tensors["t"]
    assert list(got.shape) == shape and got.dtype == torch.float32
    assert same_bits(got, t)


def test_round_trip_of_non_contiguous_tensor_sends_its_values():
    t = torch.arange(12, dtype=torch.float32).view(3, 4).t()  # a transposed view
    got = round_trip(Message(kind="train", tensors={"t": t})).tensors["t"]
    assert got.tolist() == t.tolist()


def test_round_trip_preserves_kind_seq_versions_meta_and_tensor_order():
    meta = {"step": 420, "epoch": 2, "progress": 0.25, "tag": "x", "nested": {"a": [1, 2]},
            "flag": True, "none": None}
    msg = Message(kind="train", versions=[412, 409, 0], meta=meta, seq=17,
                  tensors={"pos": torch.ones(2, 3), "neg": torch.zeros(2, 3),
                           "y": torch.tensor([1, 2])})
    got = round_trip(msg)
    assert (got.kind, got.seq, got.versions, got.meta) == ("train", 17, [412, 409, 0], meta)
    assert list(got.tensors) == ["pos", "neg", "y"]


def test_round_trip_of_ctrl_message_without_tensors():
    got = round_trip(ctrl("checkpoint", step=5))
    assert got.kind == "ctrl" and got.meta == {"op": "checkpoint", "step": 5}
    assert got.tensors == {}


def test_encode_refuses_dtype_off_the_allow_list():
    with pytest.raises(TypeError):
        encode(Message(kind="train", tensors={"c": torch.zeros(2, dtype=torch.complex64)}))


# ------------------------------------------------------------------ rejections

def good_parts():
    """(header dict, buffers) of a valid message, as the encoder itself writes them."""
    frames = encode(Message(kind="train", versions=[3], meta={"step": 1},
                            tensors={"x": torch.ones(2, 3)}))
    return msgpack.unpackb(frames[0]), [bytes(b) for b in frames[1:]]


def frames_with(**changes):
    header, buffers = good_parts()
    header.update(changes)
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def rejected(frames, max_bytes: int = CAP) -> str:
    with pytest.raises(WireError) as info:
        decode(frames, max_bytes)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_good_parts_decode():  # the baseline every rejection below perturbs
    header, buffers = good_parts()
    assert decode([msgpack.packb(header), *buffers], CAP).tensors["x"].tolist() == [[1.0] * 3] * 2


@pytest.mark.parametrize("raw", [b"", b"\xc1", b"\x92\x01", b"\xde\xff\xff", b"not msgpack"])
def test_rejects_header_that_is_not_msgpack(raw):
    rejected([raw, bytes(24)])


@pytest.mark.parametrize("value", [[1, 2], "train", 7, None])
def test_rejects_header_that_is_not_a_map(value):
    rejected([msgpack.packb(value)])


def test_rejects_other_wire_version():
    header, _ = good_parts()
    assert "version" in rejected(frames_with(v=header["v"] + 1))
    rejected(frames_with(v="1"))
    header.pop("v")
    rejected([msgpack.packb(header), bytes(24)])


@pytest.mark.parametrize("kind", ["exec", "", None, 1, "TRAIN"])
def test_rejects_unknown_kind(kind):
    rejected(frames_with(kind=kind))


@pytest.mark.parametrize("meta", [{"op": "rm -rf"}, {}, {"op": None}])
def test_rejects_ctrl_with_unknown_op(meta):
    good = frames_with(kind="ctrl", meta={"op": "stop"}, tensors=[])[:1]
    assert decode(good, CAP).meta == {"op": "stop"}
    assert "op" in rejected(frames_with(kind="ctrl", meta=meta, tensors=[])[:1])


@pytest.mark.parametrize("changes", [
    {"seq": -1}, {"seq": True}, {"seq": "1"}, {"seq": 1.5},
    {"versions": [1, -2]}, {"versions": [True]}, {"versions": "1"},
    {"meta": [1]}, {"meta": None},
])
def test_rejects_bad_seq_versions_meta(changes):
    rejected(frames_with(**changes))


@pytest.mark.parametrize("dtype", ["object", "complex64", "float128", "", None, "torch.float32"])
def test_rejects_dtype_off_the_allow_list(dtype):
    assert "dtype" in rejected(frames_with(
        tensors=[{"name": "x", "dtype": dtype, "shape": [2, 3]}]))


@pytest.mark.parametrize("shape", [[-1, 3], [2, True], [2, 1.5], ["2", 3], "2,3", None,
                                   {"a": 1}])
def test_rejects_bad_shape_entries(shape):
    rejected(frames_with(tensors=[{"name": "x", "dtype": "float32", "shape": shape}]))


def test_rejects_too_many_dimensions():
    shape = [1] * 40
    rejected([msgpack.packb({**good_parts()[0], "tensors": [
        {"name": "x", "dtype": "uint8", "shape": shape}]}), b"\x00"])


@pytest.mark.parametrize("nbytes", [0, 23, 25, 48])
def test_rejects_buffer_whose_length_is_not_prod_shape_times_itemsize(nbytes):
    # float32 [2, 3] needs exactly 2 * 3 * 4 = 24 bytes
    header, _ = good_parts()
    assert "bytes" in rejected([msgpack.packb(header), bytes(nbytes)])


def forbid_allocation(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decode allocated a tensor for a rejected message")
    for name in ("empty", "frombuffer", "zeros"):
        monkeypatch.setattr(torch, name, boom)


def test_huge_declared_shape_is_rejected_by_cap_before_allocating(monkeypatch):
    forbid_allocation(monkeypatch)
    frames = frames_with(tensors=[{"name": "x", "dtype": "uint8", "shape": [2 ** 40]}])
    assert "cap" in rejected([frames[0], b"\x00" * 8], max_bytes=CAP)


def test_huge_declared_shape_under_a_huge_cap_fails_length_check_before_allocating(
        monkeypatch):
    forbid_allocation(monkeypatch)
    frames = frames_with(tensors=[{"name": "x", "dtype": "float64",
                                   "shape": [2 ** 20, 2 ** 20]}])
    rejected([frames[0], b"\x00" * 8], max_bytes=2 ** 62)


def test_cap_counts_all_tensors_together():
    specs = [{"name": n, "dtype": "uint8", "shape": [600]} for n in ("a", "b")]
    frames = frames_with(tensors=specs)[:1] + [bytes(600), bytes(600)]
    assert decode(frames, 1200).tensors["b"].numel() == 600
    assert "cap" in rejected(frames, max_bytes=1000)


@pytest.mark.parametrize("n_buffers", [0, 2, 3])
def test_rejects_frame_count_not_matching_tensor_specs(n_buffers):
    header, _ = good_parts()
    rejected([msgpack.packb(header)] + [bytes(24)] * n_buffers)


def test_rejects_empty_frame_list():
    rejected([])


def test_rejects_duplicate_tensor_names():
    specs = [{"name": "x", "dtype": "uint8", "shape": [1]}] * 2
    assert "duplicate" in rejected(frames_with(tensors=specs)[:1] + [b"\x00", b"\x00"])


@pytest.mark.parametrize("spec", [[1], [{"dtype": "uint8", "shape": [1]}],
                                  [{"name": 5, "dtype": "uint8", "shape": [1]}]])
def test_rejects_malformed_tensor_spec(spec):
    rejected(frames_with(tensors=spec)[:1] + [b"\x00"])


def test_rejects_too_many_tensors():
    specs = [{"name": f"t{i}", "dtype": "uint8", "shape": [1]} for i in range(200)]
    rejected(frames_with(tensors=specs)[:1] + [b"\x00"] * 200)


def test_rejects_oversized_header_even_when_it_is_valid_msgpack():
    # 100 strings of 60 kB: each within msgpack's own limits, 6 MB in all
    meta = {f"k{i}": "x" * 60_000 for i in range(100)}
    frames = frames_with(meta=meta)
    assert len(frames[0]) > 5_000_000
    assert "header" in rejected(frames)


@pytest.mark.parametrize("meta", [{"blob": b"\x80\x04"},
                                  {"ext": msgpack.ExtType(1, b"x")},
                                  {1: "int key"}])
def test_rejects_binary_ext_and_non_string_keys_in_header(meta):
    rejected(frames_with(meta=meta))


# ------------------------------------------------------------------ never pickle

WIRE_MODULES = ["wire.py", "transport/local.py", "transport/zmq_channel.py",
                "transport/dist_channel.py"]
PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve",
            "joblib", "msgpack_numpy"}


@pytest.mark.parametrize("name", WIRE_MODULES)
def test_wire_modules_import_no_pickle_family_module(name):
    src = (Path(wire.__file__).parent / name).read_text()
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mods = [(node.module or "").split(".")[0]]
        else:
            mods = []
        assert not PICKLERS & set(mods), f"{name}:{node.lineno} imports {mods}"
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"recv_pyobj", "send_pyobj", "loads", "load"}, (
                f"{name}:{node.lineno} uses .{node.attr}")
        if isinstance(node, ast.Name):
            assert node.id not in PICKLERS, f"{name}:{node.lineno} names {node.id}"


def test_round_trip_works_with_pickle_disabled(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pickle used on the wire path")
    for name in ("loads", "load", "dumps", "dump", "Unpickler", "Pickler"):
        monkeypatch.setattr(pickle, name, boom)
    msg = Message(kind="train", versions=[1], meta={"a": 1}, tensors={"x": torch.ones(3)})
    assert round_trip(msg).tensors["x"].tolist() == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------ local shm channel

@pytest.fixture
def channel():
    ctx = torch.multiprocessing.get_context("spawn")
    made = []

    def make(slots=2, slot_bytes=1024, max_bytes=CAP):
        ch = ShmChannel(ctx, slots=slots, slot_bytes=slot_bytes, max_bytes=max_bytes)
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
    ch = channel(slots=2, slot_bytes=256)
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
