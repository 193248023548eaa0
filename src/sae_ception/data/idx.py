"""Reader (and writer, for tests and small fixtures) of the IDX format MNIST ships in; no torchvision needed."""

import gzip
import os
from pathlib import Path

import numpy as np

from sae_ception.errors import ArtifactError

# IDX type code (third magic byte) -> big-endian numpy dtype
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike, setting: str = "dataset.path") -> np.ndarray:
    """The array stored in an IDX file (gzip when the name ends in .gz); malformed files raise ArtifactError."""
    path = Path(path)
    try:
        with _open(path) as f:
            raw = f.read()
    except (OSError, EOFError) as ex:
        raise ArtifactError(f"{setting}: cannot read {path} ({type(ex).__name__}: {ex}); expected an IDX file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ArtifactError(
            f"{setting}: {path} is not an IDX file (magic number {raw[:4].hex() or 'missing'}; "
            "expected 0000, a type code 08-0e, then the number of dimensions)"
        )
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ArtifactError(f"{setting}: {path} is truncated inside its IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ArtifactError(
            f"{setting}: {path} holds {len(raw) - header} data bytes but its IDX header {shape} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write `array` as IDX (gzip when the name ends in .gz), e.g. to build a small MNIST-layout folder."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    code = codes.get(np.dtype(array.dtype).newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store {array.dtype}; use one of uint8, int8, int16, int32, float32, float64")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as f:
        f.write(header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes())
