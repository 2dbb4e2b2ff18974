"""The registry of training data sources: `config.data.dataset` -> how to open a split.

A source is random access (`len`, `[i]` -> a dict of numpy arrays), which is what the grain
pipeline and its checkpointed iterator state need. Each entry says which key of a record
the train step reads (`video`: uint8 pixels tokenized inside the step; `latents`: already
tokenized) and how long its clips are, so the trainer checks a curriculum stage against it
before any work.

Adding a data source is one `register_data_source(DataSource(...))` call and its tests.
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from videomar_jax.data import bouncing_balls, latent_cache, moving_mnist
from videomar_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataSource:
  """One kind of training data.

  open: (config, workdir, split) -> a random-access source of records.
  batch_key: the record key the train step reads: "video" (uint8 [F, H, W, 3]) or "latents".
  clip_frames: config -> frames per stored clip (a stage may not ask for more), or None when
    the source checks its clips itself (cached latents are checked against the tokenizer).
  pixel_test_split: (config, workdir) -> the test split as pixel clips (records with
    `frames`, and ball `centres` and `colours` where the source has them), for
    `videomar evaluate`; None if this source cannot be scored.
  num_given_frames: frames its evaluation protocol gives the model (image-to-video: 1;
    Moving MNIST: 10 given, 10 predicted).
  """
  name: str
  open: Callable[[ml_collections.ConfigDict, str, str], Any]
  batch_key: str = "video"
  clip_frames: Callable[[ml_collections.ConfigDict], int] | None = None
  pixel_test_split: Callable[[ml_collections.ConfigDict, str], Any] | None = None
  num_given_frames: int = 1


_SOURCES: dict[str, DataSource] = {}


def register_data_source(source: DataSource) -> None:
  if source.name in _SOURCES:
    raise ValueError(f"data source {source.name!r} is already registered")
  _SOURCES[source.name] = source


def known_data_sources() -> list[str]:
  return sorted(_SOURCES)


def data_source(config: ml_collections.ConfigDict) -> DataSource:
  """The registry entry of `config.data.dataset`."""
  name = config.data.dataset
  if name not in _SOURCES:
    raise ConfigError(f"config.data.dataset={name!r} is not known; known: "
                      f"{known_data_sources()}.")
  return _SOURCES[name]


def open_split(config: ml_collections.ConfigDict, workdir: str, split: str = "train"):
  """The random-access source of `split` for `config.data`."""
  return data_source(config).open(config, workdir, split)


# ---- bouncing_balls: built on first use into <workdir>/data (or config.data.data_dir).
def _bouncing_balls_settings(data: ml_collections.ConfigDict) -> dict:
  return dict(num_train_clips=data.num_train_clips, num_test_clips=data.num_test_clips,
              num_frames=data.num_frames, resolution=data.resolution,
              num_balls=data.num_balls)


def _open_bouncing_balls(config, workdir: str, split: str):
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  return _built_once(
      lambda: bouncing_balls.load(data_dir, split, **_bouncing_balls_settings(config.data)))


def _built_once(load: Callable[[], Any]):
  """`load()` of a dataset built on first use: on a pod, process 0 builds, the others wait."""
  if jax.process_count() == 1:
    return load()
  # Process 0 builds the dataset if it is missing; the others wait, then read it.
  source = load() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("videomar dataset ready")
  return source if source is not None else load()


# ---- moving_mnist: built on first use into <workdir>/data (or config.data.data_dir).
def _moving_mnist_settings(data: ml_collections.ConfigDict) -> dict:
  return dict(num_train_clips=data.num_train_clips, num_test_clips=data.num_test_clips,
              num_frames=data.num_frames, num_digits=data.num_digits)


def _open_moving_mnist(config, workdir: str, split: str):
  if config.data.resolution != moving_mnist.CANVAS:
    raise ConfigError(f"data.dataset is 'moving_mnist', whose frames are {moving_mnist.CANVAS}"
                      f"x{moving_mnist.CANVAS}; set config.data.resolution="
                      f"{moving_mnist.CANVAS} (stages may train smaller).")
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  return _built_once(
      lambda: moving_mnist.load(data_dir, split, **_moving_mnist_settings(config.data)))


# ---- latents: a cache written by `videomar data encode` (config.data.latents_dir).
def _open_latents(config, workdir: str, split: str):
  del workdir
  if not config.data.latents_dir:
    raise ConfigError("data.dataset is 'latents' but config.data.latents_dir is empty.")
  return latent_cache.load(config.data.latents_dir, split)[0]


def _latents_pixel_test_split(config, workdir: str):
  """The test split of the pixel dataset the cache was encoded from (its metadata names
  it)."""
  del workdir
  source = latent_cache.read_meta(config.data.latents_dir)["source"]
  if source.get("dataset") != "bouncing_balls":
    raise ConfigError(f"evaluate scores bouncing-balls clips; the latent cache "
                      f"{config.data.latents_dir} was encoded from {source}.")
  settings = {k: v for k, v in source.items() if k not in ("dataset", "data_dir")}
  return bouncing_balls.load(source["data_dir"], "test", **settings)


register_data_source(DataSource(
    "bouncing_balls", _open_bouncing_balls, batch_key="video",
    clip_frames=lambda config: config.data.num_frames,
    pixel_test_split=lambda config, workdir: _open_bouncing_balls(config, workdir, "test")))
register_data_source(DataSource(
    "moving_mnist", _open_moving_mnist, batch_key="video",
    clip_frames=lambda config: config.data.num_frames,
    pixel_test_split=lambda config, workdir: _open_moving_mnist(config, workdir, "test"),
    num_given_frames=moving_mnist.NUM_GIVEN))
register_data_source(DataSource(
    "latents", _open_latents, batch_key="latents",
    pixel_test_split=_latents_pixel_test_split))
