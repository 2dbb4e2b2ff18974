"""Damaged dataset files named as such: a missing, empty, truncated or overwritten shard.

ArrayRecord and Riegeli report damage as bare `RuntimeError`s or decoding errors without
the file, sometimes only many steps into a run. `check_split` reads the first and last
record of every shard when a split is opened (a missing, empty or truncated shard fails
there), and `CheckedSource` names the shard and record of any later read that fails (bytes
overwritten in the middle). Both raise `DatasetFileError` with the file and how to rebuild.
"""

import bisect
import os
from typing import Any

import tensorflow_datasets as tfds

from videomar_jax.errors import UserError


class DatasetFileError(UserError):
  """A dataset file that is missing or cannot be read."""


def reason(error: BaseException, limit: int = 200) -> str:
  """An error as one line of at most about `limit` characters."""
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= limit else text[:limit] + "..."


class CheckedSource:
  """A random-access source whose read failures name the shard file and what to do.

  shards: (path, number of records) per file, in the source's record order.
  """

  def __init__(self, source: Any, shards: list[tuple[str, int]], rebuild_hint: str):
    self.source, self.shards, self.rebuild_hint = source, shards, rebuild_hint
    self._starts = []
    start = 0
    for _, count in shards:
      self._starts.append(start)
      start += count

  def __len__(self) -> int:
    return len(self.source)

  def locate(self, index: int) -> tuple[str, int]:
    """(shard file, record within it) of global record `index`."""
    shard = max(bisect.bisect_right(self._starts, index) - 1, 0)
    return self.shards[shard][0], index - self._starts[shard]

  def __getitem__(self, index):
    try:
      return self.source[index]
    except UserError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      path, record = self.locate(int(index))
      raise DatasetFileError(
          f"record {record} of {path} cannot be read ({reason(e)}): the file is damaged. "
          f"{self.rebuild_hint}") from e

  def __repr__(self) -> str:
    return f"CheckedSource({self.source!r})"


def check_split(source: Any, shards: list[tuple[str, int]], rebuild_hint: str) -> CheckedSource:
  """Checks that every shard of a split exists and that its first and last records read;
  returns the source wrapped in a `CheckedSource`."""
  for path, _ in shards:
    if not os.path.exists(path):
      raise DatasetFileError(f"{path} is missing (an interrupted build, or a deleted file). "
                             f"{rebuild_hint}")
    if os.path.getsize(path) == 0:
      raise DatasetFileError(f"{path} is empty (an interrupted build?). {rebuild_hint}")
  checked = CheckedSource(source, shards, rebuild_hint)
  for start, (_, count) in zip(checked._starts, shards):  # pylint: disable=protected-access
    for index in sorted({start, start + count - 1}):
      if count:
        checked[index]
  return checked


def prepare_builtin(make_builder, folder: str, dataset: str):
  """`make_builder()` prepared (generated and written on first use, later only its stored
  metadata read). A stored dataset whose metadata is missing or unreadable (an interrupted
  build) is a `DatasetFileError` naming `folder` and how to rebuild; a fresh build's own
  failure is raised as it is."""
  tfds.disable_progress_bar()
  existed = os.path.isdir(folder)
  try:
    builder = make_builder()
    builder.download_and_prepare()
    if not builder.info.splits:
      raise ValueError("its dataset_info.json lists no splits")
  except Exception as e:  # pylint: disable=broad-except
    if not existed:  # a failure of a fresh build: not about stored files
      raise
    raise DatasetFileError(
        f"the {dataset} dataset in {folder} is incomplete or damaged ({reason(e)}); an "
        f"interrupted build? Delete {folder} and run again: the built-in dataset is rebuilt "
        "on first use (or with `videomar data build`).") from e
  return builder


def tfds_shards(builder, split: str) -> list[tuple[str, int]]:
  """(path, records) of every file of a TFDS split, from the builder's dataset info."""
  info = builder.info.splits[split]
  return [(os.fspath(path), count) for path, count in zip(info.filepaths, info.shard_lengths)]
