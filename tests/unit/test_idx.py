"""IDX reader/writer: round trips, and every broken file is a one-line DataError naming it."""

import gzip
import struct

import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.idx import read_idx, write_idx


def one_line_naming(exc: DataError, name: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    assert name in msg
    return msg


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
def test_write_then_read_gives_back_same_array_and_dtype(tmp_path, suffix, dtype):
    a = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, a)
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(a, b)


def test_gz_path_is_gzipped_and_raw_path_is_not(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "x.gz", a)
    write_idx(tmp_path / "x", a)
    assert gzip.decompress((tmp_path / "x.gz").read_bytes()) == (tmp_path / "x").read_bytes()


def test_written_header_is_the_mnist_layout(tmp_path):
    write_idx(tmp_path / "img", np.zeros((3, 28, 28), np.uint8))
    raw = (tmp_path / "img").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x08, 3])
    assert struct.unpack(">3I", raw[4:16]) == (3, 28, 28)
    assert len(raw) == 16 + 3 * 28 * 28


def test_multibyte_values_are_stored_big_endian(tmp_path):
    write_idx(tmp_path / "v", np.array([1], np.int32))
    assert (tmp_path / "v").read_bytes()[-4:] == b"\x00\x00\x00\x01"


def test_missing_file_raises_data_error_naming_it(tmp_path):
    with pytest.raises(DataError) as exc:
        read_idx(tmp_path / "train-images-idx3-ubyte")
    one_line_naming(exc, "train-images-idx3-ubyte")


def test_truncated_file_raises_data_error_with_expected_and_found_sizes(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    header = struct.pack(">BBBB3I", 0, 0, 8, 3, 60000, 28, 28)
    path.write_bytes(header + b"\x00" * 1000)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    msg = one_line_naming(exc, "train-images-idx3-ubyte")
    assert "expected 47040000 bytes of data, found 1000" in msg
    assert "truncated" in msg and "re-download" in msg


def test_oversized_file_raises_data_error(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 3) + b"\x01" * 4)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert "expected 3 bytes of data, found 4" in one_line_naming(exc, path.name)


def test_header_cut_short_raises_data_error(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + b"\x00" * 5)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    one_line_naming(exc, path.name)


@pytest.mark.parametrize("head", [b"PK\x03\x04", b"\x00\x00\x07\x01", b"\x01\x00\x08\x01",
                                  b"", b"<ht"])
def test_wrong_magic_raises_data_error_naming_the_file(tmp_path, head):
    path = tmp_path / "train-labels-idx1-ubyte"
    path.write_bytes(head + b"\x00" * 8)
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert "magic" in one_line_naming(exc, "train-labels-idx1-ubyte")


def test_corrupt_gzip_raises_data_error_naming_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"this is an html error page, not gzip")
    with pytest.raises(DataError) as exc:
        read_idx(path)
    assert "gzip" in one_line_naming(exc, path.name)


def test_cut_off_gzip_download_raises_data_error(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, np.arange(5000, dtype=np.int32))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError) as exc:
        read_idx(path)
    one_line_naming(exc, path.name)


def test_write_rejects_dtype_without_idx_code(tmp_path):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.zeros(3, np.int64))
