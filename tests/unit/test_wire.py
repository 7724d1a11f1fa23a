"""Wire format: bit-exact round trips, every rejection rule, no pickle anywhere."""

import ast
import pickle
from pathlib import Path

import msgpack
import pytest
import torch

import pipeline.wire as wire
from messages import CAP, frames_with, good_parts, random_bits, same_bits
from pipeline.wire import Message, WireError, ctrl, decode, encode

pytestmark = pytest.mark.timeout(30)


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


@pytest.mark.parametrize("depth", [2_000, 1_000_000])
def test_rejects_a_header_nested_deeper_than_msgpack_unpacks(depth):
    # One byte per level: a small header that would otherwise cost deep recursion.
    header = msgpack.packb({"v": 1, "kind": "ctrl", "seq": 0, "versions": [],
                            "meta": {"op": "epoch", "x": 0}, "tensors": []})
    nested = header.replace(b"\xa1x\x00", b"\xa1x" + b"\x91" * depth + b"\x00")
    assert len(nested) > depth and "msgpack" in rejected([nested])


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
