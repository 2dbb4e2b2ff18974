"""The grain internals that data/pipeline.py relies on, checked one by one.

`iterator_state_after` (resuming on another number of processes) reads the DataLoader's
private `_sampler` and `_shard_options` and writes grain's iterator-state JSON itself, and
`GlobalBatchRows.__repr__` is what grain compares when it restores a state. setup.py pins
the grain release these were checked against; a failure here names what moved, so that a
new grain release is adopted by updating pipeline.py and the pin together, never silently
(a wrong data position after a resume would not raise anything by itself).
"""

import importlib.metadata
import json
import os
import re

import grain
import numpy as np
import pytest

from conftest import REPO
from videomar_jax.data import pipeline

# The keys and format version of grain's DataLoader iterator state (grain 0.2.18).
STATE_KEYS = {"version", "last_seen_indices", "last_worker_index", "worker_count", "sampler",
              "data_source"}
STATE_VERSION = 2


def _pin() -> str:
  with open(os.path.join(REPO, "setup.py")) as f:
    return re.search(r'"(grain[^"]*)"', f.read()).group(1)


def _require(condition: bool, what: str) -> None:
  if not condition:
    pytest.fail(f"grain {importlib.metadata.version('grain')} changed what "
                f"videomar_jax/data/pipeline.py relies on: {what}. It was written against the "
                f"release setup.py pins ({_pin()}); adapt iterator_state_after / "
                "GlobalBatchRows to the new release before widening the pin.", pytrace=False)


class _Clips:
  """12 in-memory clips of 2 frames (clip i is filled with the value i)."""

  def __len__(self):
    return 12

  def __getitem__(self, index):
    return {"frames": np.full((2, 4, 4, 3), index, np.uint8)}

  def __repr__(self):  # grain checks it on restore, as it checks the sampler's
    return "_Clips()"


def _loader(shard_index=0, shard_count=1):
  return pipeline.make_loader(_Clips(), global_batch_size=4, num_frames=1, resolution=4,
                              seed=3, shard_index=shard_index, shard_count=shard_count)


def test_the_installed_grain_is_the_pinned_release():
  low, high = re.fullmatch(r"grain>=([\d.]+),<([\d.]+)", _pin()).groups()
  version = importlib.metadata.version("grain")
  as_tuple = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])
  assert as_tuple(low) <= as_tuple(version) < as_tuple(high), (
      f"grain {version} is installed, setup.py pins {_pin()}: run this file on it and move "
      "the pin with it.")


def test_the_data_loader_attributes_iterator_state_after_reads():
  loader = _loader(shard_index=1, shard_count=2)
  _require(isinstance(getattr(loader, "_sampler", None), pipeline.GlobalBatchRows),
           "DataLoader._sampler no longer holds the sampler it was given")
  shard = getattr(loader, "_shard_options", None)
  _require(getattr(shard, "shard_index", None) == 1 and getattr(shard, "shard_count", None)
           == 2, "DataLoader._shard_options no longer holds the ShardOptions "
           "(shard_index, shard_count) it was given")
  _require(getattr(getattr(loader, "multiprocessing_options", None), "num_workers", None)
           == 0, "DataLoader.multiprocessing_options.num_workers is gone")


@pytest.mark.parametrize("shard_index,shard_count", [(0, 1), (1, 2)])
def test_the_iterator_state_format_and_its_rebuild_from_a_step(shard_index, shard_count):
  loader = _loader(shard_index, shard_count)
  iterator = iter(loader)
  for _ in range(3):
    next(iterator)
  state = json.loads(iterator.get_state())
  _require(set(state) == STATE_KEYS, f"the iterator state's keys are {sorted(state)}, not "
           f"{sorted(STATE_KEYS)}")
  _require(state["version"] == STATE_VERSION,
           f"the iterator state's version is {state['version']}, not {STATE_VERSION}")
  _require(state["sampler"] == repr(loader._sampler),  # pylint: disable=protected-access
           "the state no longer records repr(sampler), which GlobalBatchRows.__repr__ "
           "serves")
  rebuilt = json.loads(pipeline.iterator_state_after(loader, 3))
  _require(rebuilt == state, f"last_seen_indices after 3 batches is "
           f"{state['last_seen_indices']}, iterator_state_after computes "
           f"{rebuilt['last_seen_indices']}")
  expected = next(iterator)["video"]
  resumed = iter(_loader(shard_index, shard_count))
  resumed.set_state(pipeline.iterator_state_after(loader, 3))
  _require(np.array_equal(next(resumed)["video"], expected),
           "a fresh iterator set to the rebuilt state does not continue with the 4th batch")


def test_record_metadata_as_global_batch_rows_builds_it():
  order = grain.samplers.IndexSampler(num_records=12, shard_options=grain.sharding.ShardOptions(
      0, 1, drop_remainder=True), shuffle=True, num_epochs=None, seed=3)
  meta = order[5]
  _require(hasattr(meta, "record_key") and hasattr(meta, "rng"),
           "IndexSampler's records lost record_key or rng")
  rows = pipeline.GlobalBatchRows(order, 4, 2, [2, 3])
  got = rows[3]  # shard 1's 2nd index -> its row 1 = row 3 of batch 0 -> global position 3
  _require(isinstance(got, grain.RecordMetadata) and got.index == 3
           and got.record_key == order[3].record_key,
           "grain.RecordMetadata(index=, record_key=, rng=) no longer builds a record")
