"""Reading and writing `.safetensors` files with NumPy only (no torch needed).

The format is an 8-byte little-endian header length, a JSON header
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}` and the raw
little-endian tensor bytes. The `safetensors` package's NumPy API has no bfloat16, which is
how most PyTorch checkpoints are stored, so this module reads BF16 through `ml_dtypes`.
"""

import json
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
  """A `.safetensors` file that cannot be read (truncated, corrupt or unsupported)."""


def load(path: str) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` file, as NumPy arrays in their stored dtype."""
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
    data = f.read()
  header.pop("__metadata__", None)
  out = {}
  for name, info in header.items():
    dtype = _DTYPES.get(info.get("dtype"))
    if dtype is None:
      raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype "
                             f"{info.get('dtype')!r}.")
    begin, end = info["data_offsets"]
    shape = tuple(info["shape"])
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if end > len(data) or end - begin != expected:
      raise SafetensorsError(f"{path}: tensor {name!r} (shape {shape}, {info['dtype']}) has "
                             f"byte range [{begin}, {end}) but the data section holds "
                             f"{len(data)} bytes; the file is truncated or corrupt.")
    out[name] = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=int(
        np.prod(shape, dtype=np.int64)), offset=begin).reshape(shape).astype(dtype)
  return out


def save(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None):
  """Writes `tensors` (name -> array) to `path` atomically (a temporary file, then rename)."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    if array.dtype not in _NAMES:
      raise SafetensorsError(f"tensor {name!r}: dtype {array.dtype} cannot be stored.")
    blob = array.astype(array.dtype.newbyteorder("<")).tobytes()
    header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(blob)]}
    chunks.append(blob)
    offset += len(blob)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # the spec's 8-byte alignment of the data section
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for blob in chunks:
      f.write(blob)
  os.replace(tmp, path)
