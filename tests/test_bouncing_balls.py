"""Tests for the bouncing-balls physics, renderer and TFDS builder."""

import glob
import os
import pickle

import numpy as np
import pytest

from videomar_jax.data import bouncing_balls as bb

PHYSICS = dict(resolution=32, radius=3, gravity=0.5, restitution=0.9, substeps=4)
SMALL = dict(num_train_clips=20, num_test_clips=6, num_frames=12, resolution=32, num_balls=3)


def _simulate(centres, colour_ids, num_frames, **overrides):
  kwargs = {**PHYSICS, **overrides}
  return bb.simulate(np.asarray(centres), np.asarray(colour_ids), num_frames=num_frames,
                     **kwargs)


def _random_states(n, seed=0, num_balls=3, resolution=32, radius=3):
  rng = np.random.default_rng(seed)
  return [bb.sample_initial_state(rng, resolution=resolution, num_balls=num_balls,
                                  radius=radius) for _ in range(n)]


def _recover_from_first_frame(frame, colours):
  """Centres and colour ids as they can be read off a rendered first frame."""
  centres, colour_ids = [], []
  for rgb in colours:
    matches = np.flatnonzero(np.all(bb.PALETTE_RGB == rgb, axis=-1))
    assert matches.size == 1, f"colour {rgb} is not a palette colour"
    rows, cols = np.nonzero(np.all(frame == rgb, axis=-1))
    assert rows.size > 0
    centres.append([cols.mean(), rows.mean()])
    colour_ids.append(int(matches[0]))
  return np.array(centres), np.array(colour_ids)


# ------------------------------------------------------------------------------ palette


def test_palette_is_saturated_distinct_and_has_distinct_velocities():
  assert bb.PALETTE_RGB.shape[0] >= 6 and bb.PALETTE_RGB.dtype == np.uint8
  assert bb.PALETTE_VX.shape == (bb.PALETTE_RGB.shape[0],)
  assert len({tuple(c) for c in bb.PALETTE_RGB}) == len(bb.PALETTE_RGB)
  assert np.all(bb.PALETTE_RGB.max(axis=1) == 255)  # saturated, never black
  assert len(set(bb.PALETTE_VX.tolist())) == len(bb.PALETTE_VX)
  assert np.any(bb.PALETTE_VX < 0) and np.any(bb.PALETTE_VX > 0)
  assert np.all(bb.PALETTE_VX != 0)


# ------------------------------------------------------------------------------ physics


def test_balls_start_at_rest_vertically():
  centres = _simulate([[10, 5], [20, 12]], [0, 5], num_frames=3)
  # From rest, the first frame's drop is exactly g / 2 (no floor contact yet).
  np.testing.assert_allclose(centres[1, :, 1] - centres[0, :, 1], PHYSICS["gravity"] / 2)
  np.testing.assert_allclose(centres[2, :, 1] - centres[0, :, 1], PHYSICS["gravity"] * 2)


def test_balls_stay_inside_walls_and_above_floor():
  lo, hi = PHYSICS["radius"], PHYSICS["resolution"] - 1 - PHYSICS["radius"]
  for centres0, colour_ids in _random_states(30, num_balls=4):
    centres = _simulate(centres0, colour_ids, num_frames=200)
    assert np.all(centres >= lo - 1e-9) and np.all(centres <= hi + 1e-9)
    # Balls never rise above their (resting) start height.
    assert np.all(centres[:, :, 1] >= centres0[None, :, 1] - 1e-9)


def test_bounces_lose_energy():
  floor = PHYSICS["resolution"] - 1 - PHYSICS["radius"]
  y = _simulate([[15, 3]], [0], num_frames=120)[:, 0, 1]
  heights = floor - y
  apex = [heights[0]] + [heights[t] for t in range(1, len(y) - 1)
                         if heights[t] > 0.5 and heights[t] >= heights[t - 1]
                         and heights[t] > heights[t + 1]]
  assert len(apex) >= 4, apex
  assert np.all(np.diff(apex) < 0), apex
  # Peak heights shrink by about restitution^2 per bounce (frame sampling blurs apexes).
  ratios = np.array(apex[1:]) / np.array(apex[:-1])
  np.testing.assert_allclose(ratios[:3], PHYSICS["restitution"] ** 2, atol=0.06)
  # The ball ends up resting on the floor.
  y_long = _simulate([[15, 3]], [0], num_frames=400)[:, 0, 1]
  np.testing.assert_allclose(y_long[-20:], floor, atol=1e-6)


def test_horizontal_speed_is_the_colours_vx_between_wall_hits():
  lo, hi = PHYSICS["radius"], PHYSICS["resolution"] - 1 - PHYSICS["radius"]
  for colour_id, vx in enumerate(bb.PALETTE_VX):
    x = _simulate([[16, 10]], [colour_id], num_frames=100)[:, 0, 0]
    dx = np.diff(x)
    speed = abs(vx)
    # Every step moves at most |vx| and at least the first step goes in direction vx.
    assert np.all(np.abs(dx) <= speed + 1e-9)
    assert np.sign(dx[0]) == np.sign(vx)
    free = np.minimum(x[:-1] - lo, hi - x[:-1]) > speed  # no wall within reach
    assert free.sum() > 50
    np.testing.assert_allclose(np.abs(dx[free]), speed, atol=1e-9)
    # It does reach the walls and turn around.
    assert np.any(dx > 0) and np.any(dx < 0)


def test_clip_is_determined_by_its_rendered_first_frame():
  res, radius = PHYSICS["resolution"], PHYSICS["radius"]
  for centres0, colour_ids in _random_states(40, seed=3, num_balls=3):
    centres = _simulate(centres0, colour_ids, num_frames=24)
    frames = bb.render(centres, colour_ids, res, radius)
    got_centres0, got_ids = _recover_from_first_frame(frames[0], bb.PALETTE_RGB[colour_ids])
    np.testing.assert_array_equal(got_ids, colour_ids)
    replay = _simulate(got_centres0, got_ids, num_frames=24)
    np.testing.assert_allclose(replay, centres, atol=0.5)
    np.testing.assert_array_equal(bb.render(replay, got_ids, res, radius), frames)


def test_render_draws_discs_in_ball_order():
  centres = np.array([[[10.0, 10.0], [12.0, 10.0]]])
  frames = bb.render(centres, np.array([0, 2]), resolution=20, radius=3)
  assert frames.shape == (1, 20, 20, 3) and frames.dtype == np.uint8
  assert tuple(frames[0, 10, 10]) == tuple(bb.PALETTE_RGB[2])  # later ball on top
  assert tuple(frames[0, 10, 7]) == tuple(bb.PALETTE_RGB[0])
  assert tuple(frames[0, 0, 0]) == (0, 0, 0)
  ball0 = np.all(frames[0] == bb.PALETTE_RGB[0], axis=-1).sum()
  ball1 = np.all(frames[0] == bb.PALETTE_RGB[2], axis=-1).sum()
  assert ball1 == 29  # lattice points within radius 3
  assert 0 < ball0 < 29


def test_simulate_and_sampling_validate_inputs():
  with pytest.raises(ValueError, match="initial_centres"):
    _simulate(np.zeros((2, 3)), [0, 1], num_frames=4)
  with pytest.raises(ValueError, match="colour_ids"):
    _simulate(np.zeros((2, 2)), [0, 99], num_frames=4)
  with pytest.raises(ValueError, match=r"initial centres must lie in \[3.0, 28.0\]"):
    _simulate([[2, 10]], [0], num_frames=4)
  with pytest.raises(ValueError, match="gravity"):
    _simulate(np.zeros((1, 2)), [0], num_frames=4, gravity=0.0)
  with pytest.raises(ValueError, match="palette"):
    bb.sample_initial_state(np.random.default_rng(0), resolution=32, num_balls=99, radius=1)


# ------------------------------------------------------------------------------ configs


def test_config_names_encode_all_values():
  base = bb.make_config(**SMALL)
  assert bb.make_config(**SMALL) is base
  assert bb.make_config() is bb.DEFAULT_CONFIG
  names = {base.name}
  for field, value in [("num_train_clips", 21), ("num_test_clips", 7), ("num_frames", 13),
                       ("resolution", 48), ("num_balls", 2), ("radius", 2), ("gravity", 0.25),
                       ("restitution", 0.8), ("substeps", 8), ("seed", 1)]:
    names.add(bb.make_config(**{**SMALL, field: value}).name)
  assert len(names) == 11
  assert bb.config_from_name(base.name) is base
  assert pickle.loads(pickle.dumps(base)) is base
  with pytest.raises(ValueError, match="unknown"):
    bb.make_config(colour="red")


def test_default_config_values():
  config = bb.DEFAULT_CONFIG
  assert (config.num_train_clips, config.num_test_clips, config.num_frames, config.resolution,
          config.num_balls, config.radius) == (1024, 64, 16, 32, 2, 3)


# ------------------------------------------------------------------------------ builder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def builder(data_dir):
  return bb.build(data_dir, **SMALL)


def test_builder_writes_array_record_files(builder):
  files = glob.glob(os.path.join(str(builder.data_path), "*.array_record*"))
  assert {os.path.basename(f).split(".")[0] for f in files} == {
      "bouncing_balls-train", "bouncing_balls-test"}
  assert builder.builder_config.name in str(builder.data_path)


def test_splits_have_configured_sizes_and_feature_shapes(builder):
  f, r, k = SMALL["num_frames"], SMALL["resolution"], SMALL["num_balls"]
  for split, size in [("train", SMALL["num_train_clips"]), ("test", SMALL["num_test_clips"])]:
    source = builder.as_data_source(split)
    assert len(source) == size
    example = source[size - 1]
    expected = {"frames": ((f, r, r, 3), np.uint8), "centres": ((f, k, 2), np.float32),
                "colour_ids": ((k,), np.int32), "colours": ((k, 3), np.uint8)}
    assert {key: (v.shape, v.dtype) for key, v in example.items()} == expected
    assert len(set(example["colour_ids"].tolist())) == k
    np.testing.assert_array_equal(example["colours"], bb.PALETTE_RGB[example["colour_ids"]])


def test_stored_examples_match_simulation_and_first_frame(builder):
  source = builder.as_data_source("test")
  config = builder.builder_config
  for i in range(len(source)):
    example = source[i]
    centres0, colour_ids = _recover_from_first_frame(example["frames"][0], example["colours"])
    np.testing.assert_array_equal(colour_ids, example["colour_ids"])
    replay = bb.simulate(centres0, colour_ids, **config.physics_kwargs())
    np.testing.assert_allclose(replay, example["centres"], atol=0.5)
    np.testing.assert_array_equal(
        bb.render(replay, colour_ids, config.resolution, config.radius), example["frames"])


def test_train_and_test_splits_are_disjoint(builder):
  def first_frames(split):
    source = builder.as_data_source(split)
    return {source[i]["frames"][0].tobytes() for i in range(len(source))}

  assert not first_frames("train") & first_frames("test")


def test_same_config_gives_identical_data(builder, tmp_path):
  again = bb.load(str(tmp_path), "train", **SMALL)
  original = builder.as_data_source("train")
  assert len(again) == len(original)
  for i in range(len(original)):
    a, b = original[i], again[i]
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other_seed = bb.load(str(tmp_path), "train", **{**SMALL, "seed": 1})
  assert not np.array_equal(other_seed[0]["frames"], original[0]["frames"])


def test_load_reuses_prepared_data(builder, data_dir):
  marker = glob.glob(os.path.join(str(builder.data_path), "*train*"))[0]
  mtime = os.path.getmtime(marker)
  source = bb.load(data_dir, "test", **SMALL)
  assert len(source) == SMALL["num_test_clips"]
  assert os.path.getmtime(marker) == mtime
  with pytest.raises(ValueError, match="unknown split"):
    bb.load(data_dir, "validation", **SMALL)
