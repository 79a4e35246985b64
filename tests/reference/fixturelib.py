"""Shared pieces of the PyTorch oracle (tests/reference/generate.py): a minimal safetensors
writer and reader, the fixture registry, seeds and tolerances. Each oracles/*.py module
registers its fixtures here with @fixture(NAME)."""


from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

GENERATOR = "tests/reference/generate.py"

Tensors = Dict[str, torch.Tensor]
Metadata = Dict[str, str]
# relative path -> (tensors, metadata) for a safetensors file, or the bytes of any other file
FixtureFiles = Dict[str, Union[Tuple[Tensors, Optional[Metadata]], bytes]]


# ----------------------------------------------------------------------------------------------
# safetensors
#
# File = u64 little-endian header length N, N bytes of JSON header, data buffer. The header maps
# each tensor name to {"dtype", "shape", "data_offsets": [begin, end)} (offsets into the data
# buffer), plus an optional "__metadata__" object of string -> string. We lay tensors out in
# sorted name order and pad the header with spaces so the data starts 8-byte aligned.

# torch dtype -> (safetensors dtype code, little-endian numpy dtype)
_DTYPES = {
    torch.float64: ("F64", "<f8"),
    torch.float32: ("F32", "<f4"),
    torch.int64: ("I64", "<i8"),
    torch.int32: ("I32", "<i4"),
    torch.uint8: ("U8", "u1"),
    torch.bool: ("BOOL", "?"),  # one byte per element, 0 or 1
}
_NUMPY_OF_CODE = {code: np_dtype for code, np_dtype in _DTYPES.values()}


def safetensors_bytes(tensors: Tensors, metadata: Optional[Metadata] = None) -> bytes:
    header: dict = {}
    chunks: List[bytes] = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved and cannot name a tensor")
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} is not supported by the writer")
        code, np_dtype = _DTYPES[t.dtype]
        data = t.numpy().astype(np_dtype, copy=False).tobytes(order="C")
        header[name] = {"dtype": code, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    if metadata:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata must map str to str, got {key!r}: {value!r}")
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False)
    raw = text.encode("ascii")  # json.dumps escapes non-ASCII by default
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(chunks)


def read_safetensors(blob: bytes) -> Tuple[Tensors, Metadata]:
    """Inverse of safetensors_bytes, used to check what was written."""
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = blob[8 + n:]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=_NUMPY_OF_CODE[entry["dtype"]])
        tensors[name] = torch.from_numpy(array.copy()).reshape(entry["shape"])
    return tensors, metadata


def write_safetensors(path: Path, tensors: Tensors, metadata: Optional[Metadata]) -> int:
    for name, t in tensors.items():
        # A fixture holds the answer attnlens must give, and attnlens never returns NaN.
        if t.is_floating_point() and bool(torch.isnan(t).any()):
            raise ValueError(f"{path.name}: tensor {name} holds NaN")
    blob = safetensors_bytes(tensors, metadata)
    back, back_meta = read_safetensors(blob)
    assert back_meta == (metadata or {}) and sorted(back) == sorted(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t.detach().cpu()), name
    return write_bytes(path, blob)


def write_bytes(path: Path, blob: bytes) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path)
    return len(blob)


def write_fixture(path: Path, content) -> int:
    """A (tensors, metadata) pair as a checked safetensors file, or bytes as they are (files
    made by another writer, e.g. a model directory from examples/export_pytorch.py)."""
    if isinstance(content, bytes):
        return write_bytes(path, content)
    tensors, metadata = content
    return write_safetensors(path, tensors, metadata)


# ----------------------------------------------------------------------------------------------
# Registry

FIXTURES: Dict[str, Callable[[], FixtureFiles]] = {}


def fixture(name: str):
    def register(builder: Callable[[], FixtureFiles]):
        if name in FIXTURES:
            raise ValueError(f"fixture {name} registered twice")
        FIXTURES[name] = builder
        return builder
    return register


def seed_of(name: str) -> int:
    """A seed that depends only on the name (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode("utf-8"))


def base_metadata() -> Metadata:
    return {"generator": GENERATOR, "torch_version": str(torch.__version__)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    tol = 1e-6 if actual.dtype == torch.float32 else 1e-12
    if not torch.allclose(actual, expected, rtol=tol, atol=tol):
        diff = (actual - expected).abs().max().item()
        raise AssertionError(f"{what}: max abs difference {diff:g} exceeds {tol:g}")


