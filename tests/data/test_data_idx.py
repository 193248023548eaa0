import gzip

import numpy as np
import pytest

from sae_ception.data import read_idx, write_idx
from sae_ception.errors import ArtifactError


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_round_trip(tmp_path, name, dtype):
    array = (np.arange(2 * 3 * 4).reshape(2, 3, 4) * 7 % 251).astype(dtype)
    write_idx(tmp_path / name, array)
    back = read_idx(tmp_path / name)
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)


def test_gzip_chosen_by_suffix(tmp_path):
    write_idx(tmp_path / "x.gz", np.zeros(3, np.uint8))
    assert gzip.open(tmp_path / "x.gz").read()[:4] == bytes([0, 0, 8, 1])
    write_idx(tmp_path / "x", np.zeros(3, np.uint8))
    assert (tmp_path / "x").read_bytes()[:4] == bytes([0, 0, 8, 1])


def test_known_bytes_big_endian(tmp_path):
    (tmp_path / "f").write_bytes(bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE]))
    assert read_idx(tmp_path / "f").tolist() == [258, -2]


def test_bad_magic(tmp_path):
    (tmp_path / "f").write_bytes(b"PK\x03\x04" + bytes(8))
    with pytest.raises(ArtifactError, match="dataset.path: .* is not an IDX file"):
        read_idx(tmp_path / "f")


def test_truncated_data(tmp_path):
    write_idx(tmp_path / "f", np.zeros((4, 2), np.uint8))
    (tmp_path / "f").write_bytes((tmp_path / "f").read_bytes()[:-1])
    with pytest.raises(ArtifactError, match="data bytes"):
        read_idx(tmp_path / "f")


def test_corrupt_gzip(tmp_path):
    (tmp_path / "f.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ArtifactError, match="cannot read"):
        read_idx(tmp_path / "f.gz")
