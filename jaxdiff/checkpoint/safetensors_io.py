"""Memory-mapped reading of HF safetensors folders (single file or index-sharded).

Nothing is read into memory until a tensor is asked for, and then only that tensor's pages.
Every malformed input is reported with the file it came from.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be read; the message names the file and tensor."""


@dataclasses.dataclass(frozen=True)
class TensorRef:
    file: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def read_header(path: str) -> tuple[dict, int]:
    """(header dict without __metadata__, absolute offset of the data section)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header length)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{path}: truncated safetensors file (header says {n} bytes, file has {size})")
            raw = f.read(n)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: malformed safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: malformed safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    return header, 8 + n


def scan_file(path: str) -> dict[str, TensorRef]:
    header, data_start = read_header(path)
    size = os.path.getsize(path)
    out = {}
    for name, info in header.items():
        try:
            dtype_name = info["dtype"]
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor '{name}' has a malformed header entry {info!r}") from None
        if dtype_name not in DTYPES:
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {dtype_name!r}")
        dtype = DTYPES[dtype_name]
        ref = TensorRef(path, dtype, shape, data_start + begin)
        if end - begin != ref.nbytes:
            raise CheckpointError(f"{path}: tensor '{name}' spans {end - begin} bytes, "
                                  f"{info['dtype']}{list(shape)} needs {ref.nbytes}")
        if data_start + end > size:
            raise CheckpointError(f"{path}: truncated file: tensor '{name}' ends at byte {data_start + end}, "
                                  f"the file has {size}")
        out[name] = ref
    return out


@dataclasses.dataclass
class SafetensorsFolder:
    """All tensors of an HF folder, by name, without reading their data."""

    path: str
    tensors: dict[str, TensorRef]
    weight_map: dict[str, str]  # tensor -> file name (as in the index; one file for unsharded)

    @classmethod
    def open(cls, path: str) -> "SafetensorsFolder":
        path = os.fspath(path)
        index = os.path.join(path, INDEX)
        single = os.path.join(path, SINGLE)
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: malformed index ({e!r})") from None
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: malformed index ('weight_map' is not an object)")
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not os.path.exists(os.path.join(path, f))]
            if missing:
                raise CheckpointError(f"{index}: shard file(s) listed in the index are missing: {', '.join(missing)}")
            tensors: dict[str, TensorRef] = {}
            problems = []  # every file's problems in one error, not just the first file's
            for fname in files:
                found = scan_file(os.path.join(path, fname))
                listed = {k for k, v in weight_map.items() if v == fname}
                absent, unlisted = sorted(listed - set(found)), sorted(set(found) - listed)
                if absent:
                    problems.append(f"{os.path.join(path, fname)}: tensor(s) listed in the index but absent "
                                    f"from the file: {', '.join(absent)}")
                if unlisted:  # would be silently dropped by an index-driven loader
                    problems.append(f"{os.path.join(path, fname)}: tensor(s) in the file but not listed for it "
                                    f"in {INDEX}: {', '.join(unlisted)}")
                tensors.update({k: found[k] for k in listed & set(found)})
            if problems:
                raise CheckpointError("\n  ".join(problems))
            return cls(path, tensors, dict(weight_map))
        if os.path.exists(single):
            tensors = scan_file(single)
            return cls(path, tensors, {k: SINGLE for k in tensors})
        if not os.path.isdir(path):
            raise CheckpointError(f"{path}: not a directory")
        raise CheckpointError(f"{path}: no {SINGLE} or {INDEX} found")

    def array(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of one tensor."""
        ref = self.tensors[name]
        if ref.nbytes == 0:
            return np.zeros(ref.shape, ref.dtype)
        return np.memmap(ref.file, dtype=ref.dtype, mode="r", offset=ref.offset, shape=ref.shape)


def write_file(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> int:
    """Writes one safetensors file (tensors in the given order); returns the bytes of tensor data.
    Streams tensor by tensor, so memory-mapped inputs are never all resident at once."""
    header: dict = {}
    offset = 0
    for name, arr in tensors.items():
        dt = np.dtype(arr.dtype)
        if dt not in DTYPE_NAMES:
            raise CheckpointError(f"{path}: tensor '{name}' has dtype {dt} that safetensors cannot store")
        n = int(arr.size) * dt.itemsize
        header[name] = {"dtype": DTYPE_NAMES[dt], "shape": list(arr.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-len(raw)) % 8)  # data section 8-byte aligned, as the reference writer does
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
    return offset
