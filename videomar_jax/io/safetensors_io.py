"""`.safetensors` files through the `safetensors` library, read lazily (no torch needed).

The format is an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}` and the raw
little-endian tensor bytes. `open_lazy` checks the header here (so that a truncated or
corrupt file gets one clear error naming it before any tensor is read) and returns a
read-only mapping whose values are `LazyTensor`s: shape and dtype come from the header, and
the bytes are read only when a tensor is converted (`np.asarray`), through the library's
memory-mapped `safe_open`, one tensor at a time. A loader that converts tensor by tensor
therefore never holds more than the result plus one tensor (the old whole-file read held
the file twice). bfloat16 is read and written as `ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from videomar_jax.errors import UserError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(UserError):
  """A `.safetensors` file that cannot be read (truncated, corrupt or unsupported)."""


class LazyTensor:
  """One tensor of a `.safetensors` file, read from disk when converted to an array."""

  def __init__(self, path: str, name: str, shape: tuple[int, ...], dtype: np.dtype):
    self.path, self.name, self.shape, self.dtype = path, name, shape, np.dtype(dtype)

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64))

  def read(self) -> np.ndarray:
    try:
      with safe_open(self.path, framework="np") as f:
        array = f.get_tensor(self.name)
    except (SafetensorError, OSError) as e:
      raise SafetensorsError(f"{self.path}: tensor {self.name!r} cannot be read ({e}).") from None
    return array.reshape(self.shape)

  def __array__(self, dtype=None, copy=None):  # pylint: disable=redefined-outer-name
    array = self.read()
    return array if dtype is None else array.astype(dtype)

  def __repr__(self) -> str:
    return f"LazyTensor({self.name!r}, shape={self.shape}, dtype={self.dtype})"


class LazySafetensors(Mapping):
  """name -> `LazyTensor` for every tensor of one file; `.metadata` holds `__metadata__`."""

  def __init__(self, path: str, tensors: dict[str, LazyTensor], metadata: dict[str, str]):
    self.path, self._tensors, self.metadata = path, tensors, metadata

  def __getitem__(self, name: str) -> LazyTensor:
    return self._tensors[name]

  def __iter__(self) -> Iterator[str]:
    return iter(self._tensors)

  def __len__(self) -> int:
    return len(self._tensors)


def _header(path: str) -> tuple[dict, int]:
  """The parsed JSON header and the size of the data section; SafetensorsError if bad."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise SafetensorsError(f"{path}: too short to be a safetensors file ({size} bytes).")
    (header_len,) = struct.unpack("<Q", raw)
    if header_len > min(_MAX_HEADER, size - 8):
      raise SafetensorsError(f"{path}: header length {header_len} does not fit in the file "
                             f"({size} bytes); the file is corrupt or not safetensors.")
    try:
      header = json.loads(f.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise SafetensorsError(f"{path}: unreadable JSON header ({e}).") from None
  if not isinstance(header, dict):
    raise SafetensorsError(f"{path}: the header is not a JSON object.")
  return header, size - 8 - header_len


def open_lazy(path: str) -> LazySafetensors:
  """Every tensor of a `.safetensors` file as a `LazyTensor`; the header is checked now
  (dtypes known, byte ranges inside the file and of the right size), data read later."""
  path = os.fspath(path)
  header, data_size = _header(path)
  metadata = header.pop("__metadata__", None) or {}
  tensors = {}
  for name, info in header.items():
    dtype = _DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
    if dtype is None:
      raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype "
                             f"{info.get('dtype') if isinstance(info, dict) else info!r}.")
    begin, end = info["data_offsets"]
    shape = tuple(int(n) for n in info["shape"])
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if end > data_size or end - begin != expected:
      raise SafetensorsError(f"{path}: tensor {name!r} (shape {shape}, {info['dtype']}) has "
                             f"byte range [{begin}, {end}) but the data section holds "
                             f"{data_size} bytes; the file is truncated or corrupt.")
    tensors[name] = LazyTensor(path, name, shape, dtype)
  return LazySafetensors(path, tensors, dict(metadata))


def load(path: str) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` file, as NumPy arrays in their stored dtype."""
  return {name: tensor.read() for name, tensor in open_lazy(path).items()}


def save(tensors: Mapping[str, np.ndarray], path: str, metadata: dict[str, str] | None = None):
  """Writes `tensors` (name -> array) to `path` atomically (a temporary file, then rename)."""
  arrays = {}
  for name in sorted(tensors):
    array = np.ascontiguousarray(np.asarray(tensors[name]))
    if array.dtype not in _NAMES:
      raise SafetensorsError(f"tensor {name!r}: dtype {array.dtype} cannot be stored.")
    arrays[name] = array
  tmp = f"{path}.tmp"
  save_file(arrays, tmp, metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
  os.replace(tmp, path)
