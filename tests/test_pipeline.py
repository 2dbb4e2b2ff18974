"""Tests for the grain input pipeline (videomar_jax.data.pipeline)."""

import grain
import numpy as np
import pytest
from etils import epath

from videomar_jax.data import bouncing_balls as bb
from videomar_jax.data import pipeline

DATA = dict(num_train_clips=16, num_test_clips=4, num_frames=10, resolution=32, num_balls=2)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  return bb.load(str(tmp_path_factory.mktemp("tfds")), "train", **DATA)


@pytest.fixture(scope="module")
def clips(source):
  """All source records in memory, for matching crops back to their clip."""
  return [source[i] for i in range(len(source))]


def _loader(source, **overrides):
  kwargs = dict(global_batch_size=4, num_frames=4, resolution=32, seed=0, shard_index=0,
                shard_count=1)
  kwargs.update(overrides)
  return pipeline.make_loader(source, **kwargs)


def _take(loader_or_iterator, n):
  iterator = iter(loader_or_iterator)
  return [next(iterator) for _ in range(n)]


def _locate(clips, video, centres):
  """(record index, crop start) of a full-resolution crop; fails if it is not one."""
  num_frames = video.shape[0]
  for index, clip in enumerate(clips):
    for start in range(clip["frames"].shape[0] - num_frames + 1):
      if np.array_equal(clip["frames"][start:start + num_frames], video):
        np.testing.assert_array_equal(clip["centres"][start:start + num_frames], centres)
        return index, start
  raise AssertionError("the element is not a crop of consecutive frames of any source clip")


def _records(clips, batches):
  return [_locate(clips, v, c)[0] for b in batches for v, c in zip(b["video"], b["centres"])]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_batch_format(source):
  batch = _take(_loader(source, global_batch_size=6, num_frames=5), 1)[0]
  assert set(batch) == {"video", "centres"}
  assert batch["video"].shape == (6, 5, 32, 32, 3) and batch["video"].dtype == np.uint8
  assert batch["centres"].shape == (6, 5, 2, 2) and batch["centres"].dtype == np.float32
  # Each process gets global_batch_size // shard_count examples.
  sharded = _take(_loader(source, global_batch_size=6, shard_index=1, shard_count=2), 1)[0]
  assert sharded["video"].shape[0] == 3


def test_crops_are_consecutive_frames_of_a_source_clip(source, clips):
  starts = set()
  for batch in _take(_loader(source, num_frames=4), 8):
    for video, centres in zip(batch["video"], batch["centres"]):
      starts.add(_locate(clips, video, centres)[1])
  assert len(starts) > 1  # the crop start is random
  full = _take(_loader(source, num_frames=DATA["num_frames"]), 1)[0]
  for video, centres in zip(full["video"], full["centres"]):
    assert _locate(clips, video, centres)[1] == 0


def test_same_seed_same_order_different_seed_different_order(source):
  a = _take(_loader(source, seed=3), 6)
  _assert_same_batches(a, _take(_loader(source, seed=3), 6))
  b = _take(_loader(source, seed=4), 6)
  assert not all(np.array_equal(x["video"], y["video"]) for x, y in zip(a, b))


def test_shuffle_false_keeps_source_order(source, clips):
  batches = _take(_loader(source, shuffle=False, num_epochs=1), 4)
  assert _records(clips, batches) == list(range(16))


def test_epochs_cover_every_record_once_and_reshuffle(source, clips):
  batches = list(_loader(source, num_epochs=2))
  assert len(batches) == 8
  first, second = _records(clips, batches[:4]), _records(clips, batches[4:])
  assert sorted(first) == sorted(second) == list(range(16))
  assert first != list(range(16)) and second != first


def test_shards_are_disjoint_and_cover_an_epoch(source, clips):
  whole = _records(clips, list(_loader(source, num_epochs=1, global_batch_size=2)))
  shards = [
      _records(clips, list(_loader(source, num_epochs=1, global_batch_size=2,
                                   shard_index=i, shard_count=2)))
      for i in range(2)
  ]
  assert len(shards[0]) == len(shards[1]) == 8
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(whole) == list(range(16))


def test_resize_area_average_and_centres(source):
  full = _take(_loader(source, seed=7), 2)
  half = _take(_loader(source, seed=7, resolution=16), 2)
  for f, h in zip(full, half):
    assert h["video"].shape == (4, 4, 16, 16, 3)
    blocks = f["video"].reshape(4, 4, 16, 2, 16, 2, 3).astype(np.float64).mean(axis=(3, 5))
    np.testing.assert_array_equal(h["video"], np.floor(blocks + 0.5).astype(np.uint8))
    np.testing.assert_allclose(h["centres"], (f["centres"] + 0.5) / 2 - 0.5, atol=1e-6)


def test_resize_functions():
  video = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
  assert pipeline.resize_video(video, 4) is video
  area = pipeline.resize_video(video, 2)
  # Mean of the 2x2 block, halves rounded up (the mean of channel 1 is 8.5).
  np.testing.assert_array_equal(area[0, 0, 0],
                                np.floor(video[0, :2, :2].mean(axis=(0, 1)) + 0.5))
  assert area[0, 0, 0, 1] == 9
  # 4 -> 3 does not divide: nearest neighbour on pixel centres picks rows/cols 0, 2, 3
  # (output centres 0.5, 1.5, 2.5 map to source positions 0.67, 2.0, 3.33).
  nearest = pipeline.resize_video(video, 3)
  np.testing.assert_array_equal(nearest, video[:, [0, 2, 3]][:, :, [0, 2, 3]])
  # Upsampling 4 -> 8 repeats every pixel twice.
  np.testing.assert_array_equal(pipeline.resize_video(video, 8),
                                video.repeat(2, axis=1).repeat(2, axis=2))
  centres = np.array([[[0.0, 3.0]]], dtype=np.float32)  # pixel 0 and pixel 3 of 4
  np.testing.assert_allclose(pipeline.resize_centres(centres, 4, 4, 2), [[[-0.25, 1.25]]])
  np.testing.assert_allclose(pipeline.resize_centres(centres, 4, 4, 8), [[[0.5, 6.5]]])


def test_nearest_resize_in_loader(source):
  batch = _take(_loader(source, seed=2, resolution=24), 1)[0]
  full = _take(_loader(source, seed=2), 1)[0]
  assert batch["video"].shape == (4, 4, 24, 24, 3)
  np.testing.assert_array_equal(batch["video"], pipeline.resize_video(
      full["video"].reshape(16, 32, 32, 3), 24).reshape(4, 4, 24, 24, 3))


def test_iterator_state_resumes_with_identical_batches(source, tmp_path):
  loader = _loader(source, seed=5)
  iterator = iter(loader)
  _take(iterator, 3)
  state = iterator.get_state()
  assert isinstance(state, bytes)
  expected = _take(iterator, 6)  # crosses into the next epoch

  resumed = iter(_loader(source, seed=5))
  resumed.set_state(state)
  _assert_same_batches(_take(resumed, 6), expected)

  # The orbax handler grain ships (used through grain.checkpoint.CheckpointSave/Restore).
  handler = grain.checkpoint.CheckpointHandler()
  handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(resumed))
  after = _take(resumed, 2)
  restored = handler.restore(epath.Path(tmp_path),
                             args=grain.checkpoint.CheckpointRestore(iter(_loader(source, seed=5))))
  _assert_same_batches(_take(restored, 2), after)


def test_errors(source):
  with pytest.raises(ValueError, match="global_batch_size=5 .*shard_count=2"):
    _loader(source, global_batch_size=5, shard_count=2)
  with pytest.raises(ValueError, match="shard_index=2"):
    _loader(source, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="10 frames but num_frames=11"):
    _loader(source, num_frames=11)
  crop = pipeline.RandomTemporalCrop(5)
  with pytest.raises(ValueError, match="3 frames but num_frames=5"):
    crop.random_map({"frames": np.zeros((3, 4, 4, 3), np.uint8)}, np.random.default_rng(0))


@pytest.mark.parametrize("rows", [None, ([0, 2, 4, 6], [1, 3, 5, 7])])
def test_global_batches_do_not_depend_on_the_process_count(source, rows):
  """2 shards (contiguous or interleaved rows, as a TPU mesh may assign) rebuild the
  batches of one shard, crops included; so does resuming at step 3 from the step count."""
  make = lambda index, count, batch_rows=None, **kw: pipeline.make_loader(
      source, global_batch_size=8, num_frames=3, resolution=8, seed=5, shard_index=index,
      shard_count=count, batch_rows=batch_rows, **kw)
  one = iter(make(0, 1))
  expected = [next(one)["video"] for _ in range(4)]
  parts = [iter(make(p, 2, None if rows is None else rows[p])) for p in range(2)]
  for batch in expected:
    local = [next(it)["video"] for it in parts]
    got = np.empty_like(batch)
    for p, chunk in enumerate(local):
      got[np.arange(4) + 4 * p if rows is None else rows[p]] = chunk
    np.testing.assert_array_equal(got, batch)
  loader = make(1, 2, None if rows is None else rows[1])
  resumed = iter(loader)
  resumed.set_state(pipeline.iterator_state_after(loader, 3))
  np.testing.assert_array_equal(next(resumed)["video"],
                                expected[3][[4, 5, 6, 7] if rows is None else rows[1]])
  with pytest.raises(ValueError, match="are not 4 distinct rows"):
    make(0, 2, [0, 0, 1, 2])


def test_first_frame_crops(source, clips):
  """first_frame_prob=1 starts every crop at frame 0; 0.5 mixes frame-0 and random starts;
  0 keeps the crops of a loader without the option."""
  starts = lambda **kw: [_locate(clips, v, c)[1] for b in _take(_loader(source, **kw), 6)
                         for v, c in zip(b["video"], b["centres"])]
  assert set(starts(first_frame_prob=1.0)) == {0}
  mixed = starts(first_frame_prob=0.5)
  assert 0 < mixed.count(0) < len(mixed)
  _assert_same_batches(_take(_loader(source, first_frame_prob=0.0), 3), _take(_loader(source), 3))
  with pytest.raises(ValueError, match="first_frame_prob"):
    pipeline.RandomTemporalCrop(4, first_frame_prob=1.5)
