"""Row sources the metrics stream over: a dense matrix (the target layer's activations, memory-mapped) or SAE
codes stored sparse on disk, read a chunk of rows at a time so memory is bounded by the chunk, not by N.

SAE codes of N rows are N x d_sae values, nearly all zero: 2M tokens x 16k latents is 128 GB as dense float32,
while a TopK-32 SAE's non-zeros are 512 MB (values and latent indices). `write_codes` encodes rows in batches and appends each batch's
non-zeros to a compressed-sparse-row (CSR) store on disk: `indptr.npy` (int64 [N + 1]), `indices.npy` (int32
[nnz], the latent), `values.npy` (float32 [nnz]), and `codes.json` (shape, nnz, what made them). Explicit zeros
are never stored. `SparseCodes` maps the store back and yields scipy CSR chunks, dense column blocks and row
samples, all without materialising the N x d_sae matrix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Protocol, Union

import numpy as np
import torch
from scipy import sparse

from sae_ception.errors import ArtifactError
from sae_ception.utils.batching import code_batch
from sae_ception.utils.io import atomic_dir

CHUNK_ROWS = 4096  # rows per chunk a metric reads at once (dense: 4096 x d values; codes: their non-zeros)

COLUMN_BUDGET = 1 << 25  # values of a dense column block (N x units): 128 MB of float32 (~4x that in temporaries)
Block = Union[np.ndarray, sparse.csr_matrix]


class RowSource(Protocol):
    """N rows of U units, read in pieces: what every streamed metric takes."""

    shape: tuple[int, int]

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, Block]]:
        """(first row, block of up to `rows` rows) in row order: float32 ndarray or CSR matrix."""

    def take(self, index: np.ndarray) -> Block:
        """The rows `index` (any order, int array) as one block."""

    def columns(self, units: np.ndarray) -> np.ndarray:
        """Every row of the units `units`, dense float32 [N, len(units)]."""


class DenseRows:
    """A dense [N, U] tensor or array (typically memory-mapped activations) as a RowSource."""

    def __init__(self, matrix: Union[torch.Tensor, np.ndarray]):
        self.matrix = matrix.numpy() if isinstance(matrix, torch.Tensor) else matrix
        if self.matrix.ndim != 2:
            raise ValueError(f"DenseRows needs a 2-D matrix, got shape {self.matrix.shape}")
        self.shape = tuple(self.matrix.shape)

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.shape[0], rows):
            yield start, np.asarray(self.matrix[start:start + rows], dtype=np.float32)

    def take(self, index: np.ndarray) -> np.ndarray:
        order = np.argsort(index, kind="stable")  # read a memory map in file order, then put rows back in place
        out = np.empty((len(index), self.shape[1]), dtype=np.float32)
        out[order] = self.matrix[np.asarray(index)[order]]
        return out

    def columns(self, units: np.ndarray) -> np.ndarray:
        return np.concatenate([block[:, units] for _, block in self.chunks()]) if self.shape[0] else \
            np.zeros((0, len(units)), dtype=np.float32)


class SparseCodes:
    """SAE codes stored as CSR on disk (see the module docstring), memory-mapped read-only."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            meta = json.loads((self.folder / "codes.json").read_text())
            n, d_sae, nnz = int(meta["rows"]), int(meta["d_sae"]), int(meta["nnz"])
            self.indptr = np.load(self.folder / "indptr.npy", mmap_mode="r")
            self.indices = _load_flat(self.folder / "indices.npy", nnz)
            self.values = _load_flat(self.folder / "values.npy", nnz)
        except (OSError, ValueError, KeyError, TypeError) as ex:
            raise ArtifactError(f"{self.folder} is not a readable code store ({' '.join(str(ex).split())[:120]}); "
                                "delete it to encode the codes again") from ex
        if self.indptr.shape != (n + 1,) or len(self.indices) != nnz or len(self.values) != nnz or \
                (n and int(self.indptr[-1]) != nnz):
            raise ArtifactError(f"{self.folder} is a truncated code store (rows, nnz and files disagree); delete it")
        self.shape, self.nnz, self.made_with = (n, d_sae), nnz, meta.get("made_with")
        problem = self._structure_problem()
        if problem is not None:
            raise ArtifactError(f"{self.folder} is a damaged code store ({problem}); delete it to encode the codes again")

    def _structure_problem(self) -> Optional[str]:
        """What makes the CSR arrays unreadable (wrong dtypes, row pointers that go back, latents outside
        [0, d_sae)), read once in blocks: scipy would otherwise read past its arrays."""
        if self.indptr.dtype != np.int64 or self.indices.dtype != np.int32 or self.values.dtype != np.float32:
            return "unexpected dtypes"
        if len(self.indptr) and (int(self.indptr[0]) != 0 or bool((np.diff(self.indptr) < 0).any())):
            return "row pointers not ascending from 0"
        for start in range(0, self.nnz, 1 << 24):
            block = np.asarray(self.indices[start:start + (1 << 24)])
            if len(block) and (int(block.min()) < 0 or int(block.max()) >= self.shape[1]):
                return f"latent indices outside [0, {self.shape[1]})"
        return None

    def _block(self, start: int, stop: int) -> sparse.csr_matrix:
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        indptr = np.asarray(self.indptr[start:stop + 1]) - lo
        return sparse.csr_matrix((np.array(self.values[lo:hi]), np.array(self.indices[lo:hi]), indptr),
                                 shape=(stop - start, self.shape[1]))

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, sparse.csr_matrix]]:
        for start in range(0, self.shape[0], rows):
            yield start, self._block(start, min(start + rows, self.shape[0]))

    def take(self, index: np.ndarray) -> sparse.csr_matrix:
        index = np.asarray(index, dtype=np.int64)
        starts, stops = np.asarray(self.indptr[index]), np.asarray(self.indptr[index + 1])
        lengths = stops - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        entries = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])  # each row's entries, in place
        return sparse.csr_matrix((np.asarray(self.values[entries]), np.asarray(self.indices[entries]), indptr),
                                 shape=(len(index), self.shape[1]))

    def columns(self, units: np.ndarray) -> np.ndarray:
        return np.concatenate([block[:, units].toarray() for _, block in self.chunks()]) if self.shape[0] else \
            np.zeros((0, len(units)), dtype=np.float32)

    def to_dense(self) -> torch.Tensor:
        """All codes as a dense [N, d_sae] float32 tensor: for tests and small splits only."""
        return torch.from_numpy(self._block(0, self.shape[0]).toarray()) if self.shape[0] else \
            torch.zeros(0, self.shape[1])


def _load_flat(path: Path, nnz: int) -> np.ndarray:
    return np.load(path, mmap_mode="r") if nnz else np.load(path)  # an empty file cannot be mapped


def _append(file, array: np.ndarray) -> None:
    file.write(np.ascontiguousarray(array).tobytes())


def _npy_from_raw(raw: Path, path: Path, dtype, count: int) -> None:
    """Turn a raw little-endian dump of `count` values into a .npy file (header, then the bytes, streamed)."""
    with open(path, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                   "shape": (count,)})
        while block := src.read(1 << 24):
            out.write(block)
    raw.unlink()


@torch.no_grad()
def write_codes(sae, rows_ND: torch.Tensor, folder: Path, batch_size: int = 1024,
                made_with: Optional[dict] = None, on_batch=None, before_commit=None) -> SparseCodes:
    """Encode `rows_ND` [N, d_in] (raw activations, any float dtype, e.g. memory-mapped) with `sae` in batches
    of `batch_size` rows (fewer for wide SAEs: `code_batch`) on the SAE's device and store the codes sparse at
    `folder` (atomically: complete or absent). `on_batch(x_BD, codes_BF)`, when given, sees every batch (e.g. to
    sum the SAE's quality in the same pass); `before_commit()`, when given, runs once every batch is written and
    before the store replaces an older one at `folder`: an exception there leaves `folder` as it was. Memory: one
    batch of dense codes at a time, plus the [N + 1] indptr."""
    param, n = next(sae.parameters()), len(rows_ND)
    batch_size = code_batch(batch_size, sae.d_sae)
    with atomic_dir(folder) as tmp:
        nnz, indptr = 0, np.zeros(n + 1, dtype=np.int64)
        with open(tmp / "indices.raw", "wb") as indices_file, open(tmp / "values.raw", "wb") as values_file:
            for start in range(0, n, batch_size):
                x_BD = rows_ND[start:start + batch_size].to(device=param.device, dtype=param.dtype)
                codes_BF = sae.encode(x_BD)
                if on_batch is not None:
                    on_batch(x_BD, codes_BF)
                stored_BF = codes_BF != 0  # only non-zero entries are stored, row by row
                _append(indices_file, stored_BF.nonzero()[:, 1].to(torch.int32).cpu().numpy())
                _append(values_file, codes_BF[stored_BF].float().cpu().numpy())
                indptr[start + 1:start + len(x_BD) + 1] = nnz + stored_BF.sum(1).cumsum(0).cpu().numpy()
                nnz = int(indptr[start + len(x_BD)])
        _npy_from_raw(tmp / "indices.raw", tmp / "indices.npy", np.int32, nnz)
        _npy_from_raw(tmp / "values.raw", tmp / "values.npy", np.float32, nnz)
        np.save(tmp / "indptr.npy", indptr)
        (tmp / "codes.json").write_text(json.dumps({"rows": n, "d_sae": int(sae.d_sae), "nnz": nnz,
                                                    "made_with": made_with}))
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if before_commit is not None:
            before_commit()
    return SparseCodes(folder)
