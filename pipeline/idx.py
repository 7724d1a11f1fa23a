"""IDX files (the MNIST format): read and write, gzipped or raw, without torchvision.

Layout: two zero bytes, a dtype code, the number of dimensions, then one big-endian
uint32 per dimension, then the data in C order (big-endian for multi-byte types).
Every way a downloaded file can be broken (missing, truncated, not IDX, bad gzip) is a
`DataError` whose one line names the file and says what to do.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

# IDX dtype code -> big-endian numpy dtype.
DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CODES = {dt.newbyteorder("=").str[1:]: code for code, dt in DTYPES.items()}  # "u1" -> 0x08

REDOWNLOAD = "re-download it"


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: file not found; put the IDX file there or pass --data-dir")
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        # gzip raises BadGzipFile (an OSError) or EOFError for a cut-off download.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path.name}: not a valid gzip file ({reason}); "
                        f"{REDOWNLOAD}") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (`.gz` is decompressed) into a native-endian numpy array."""
    path = Path(path)
    buf = _read_bytes(path)
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in DTYPES:
        head = buf[:4].hex() or "empty"
        raise DataError(f"{path.name}: bad IDX magic number (0x{head}); "
                        f"the file is not an IDX file — {REDOWNLOAD}")
    dtype, ndim = DTYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path.name}: header cut short ({len(buf)} bytes); "
                        f"the file is truncated — {REDOWNLOAD}")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(buf) - header
    if found != expected:
        what = "truncated" if found < expected else "too long"
        raise DataError(f"{path.name}: expected {expected} bytes of data, found {found}; "
                        f"the file is {what} or not an IDX file — {REDOWNLOAD}")
    data = np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # copy: writable, native byte order


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file; gzipped when `path` ends with `.gz`."""
    path = Path(path)
    array = np.asarray(array)
    key = array.dtype.newbyteorder("=").str[1:]
    if key not in CODES:
        raise ValueError(f"write_idx: dtype {array.dtype} has no IDX code; "
                         f"use one of {sorted(CODES)}")
    code = CODES[key]
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, code, array.ndim, *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=DTYPES[code]).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)  # mtime=0: same bytes for same data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
