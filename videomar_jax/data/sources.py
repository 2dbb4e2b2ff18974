"""The registry of training data sources: `config.data.dataset` -> how to open a split.

A source is random access (`len`, `[i]` -> a dict of numpy arrays), which is what the grain
pipeline and its checkpointed iterator state need. Each entry says which key of a record
the train step reads (`video`: uint8 pixels tokenized inside the step; `latents`: already
tokenized), how long its clips are, so the trainer checks a curriculum stage against it
before any work, and which per-record transforms its training batches go through.

Adding a data source is one `register_data_source(DataSource(...))` call and its tests.
"""

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from videomar_jax.data import bouncing_balls, latent_cache, moving_mnist, pipeline, video_folder
from videomar_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataSource:
  """One kind of training data.

  open: (config, workdir, split) -> a random-access source of records.
  batch_key: the record key the train step reads: "video" (uint8 [F, H, W, 3]) or "latents".
  clip_frames: config -> frames per stored clip (a stage may not ask for more), or None when
    the source checks its clips itself (cached latents are checked against the tokenizer).
  pixel_test_split: (config, workdir) -> the test split as pixel clips (`frames`; with ball
    `centres` and `colours` where the source has them), for `videomar evaluate`; None if
    this source cannot be scored.
  train_transforms: (config, stage) -> the per-record grain transforms of a curriculum
    stage's training batches (`stage` has `num_frames`, `resolution`, `latent_frames`), or
    None for the pipeline's own temporal crop and resize of pixel clips.
  num_given_frames: frames its evaluation protocol gives the model (image-to-video: 1;
    Moving MNIST: 10 given, 10 predicted).
  """
  name: str
  open: Callable[[ml_collections.ConfigDict, str, str], Any]
  batch_key: str = "video"
  clip_frames: Callable[[ml_collections.ConfigDict], int] | None = None
  pixel_test_split: Callable[[ml_collections.ConfigDict, str], Any] | None = None
  train_transforms: Callable[[ml_collections.ConfigDict, Any], list | None] | None = None
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


def _data_dir(config, workdir: str) -> str:
  return config.data.data_dir or os.path.join(workdir, "data")


def _built_by_process_0(load: Callable[[], Any]):
  """`load()` (which builds the dataset if it is missing) in every process: process 0
  first, the others once it is done."""
  if jax.process_count() == 1:
    return load()
  source = load() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("videomar dataset ready")
  return source if source is not None else load()


def _open_bouncing_balls(config, workdir: str, split: str):
  data_dir = _data_dir(config, workdir)
  return _built_by_process_0(
      lambda: bouncing_balls.load(data_dir, split, **_bouncing_balls_settings(config.data)))


# ---- moving_mnist: built on first use into <workdir>/data (or config.data.data_dir).
def _moving_mnist_settings(data: ml_collections.ConfigDict) -> dict:
  return dict(num_train_clips=data.num_train_clips, num_test_clips=data.num_test_clips,
              num_frames=data.num_frames, num_digits=data.num_digits)


def _open_moving_mnist(config, workdir: str, split: str):
  if config.data.resolution != moving_mnist.CANVAS:
    raise ConfigError(f"data.dataset is 'moving_mnist', whose frames are {moving_mnist.CANVAS}"
                      f"x{moving_mnist.CANVAS}; set config.data.resolution="
                      f"{moving_mnist.CANVAS} (stages may train smaller).")
  data_dir = _data_dir(config, workdir)
  return _built_by_process_0(
      lambda: moving_mnist.load(data_dir, split, **_moving_mnist_settings(config.data)))


# ---- latents: a cache written by `videomar data encode` (config.data.latents_dir).
def _open_latents(config, workdir: str, split: str):
  del workdir
  if not config.data.latents_dir:
    raise ConfigError("data.dataset is 'latents' but config.data.latents_dir is empty.")
  return latent_cache.load(config.data.latents_dir, split)[0]


def _latent_train_transforms(config, stage):
  """The crop that replaces the pixel pipeline's, checked against the cache."""
  meta = latent_cache.read_meta(config.data.latents_dir)
  latent_cache.check_run(meta, config.data.latents_dir, config.tokenizer, stage.latent_frames,
                         stage.resolution, config.data.random_flip)
  return [latent_cache.LatentCrop(stage.latent_frames, config.data.random_flip)]


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


# ---- folder: the user's videos (config.data.path), built on first use like bouncing_balls.
def _open_folder(config, workdir: str, split: str):
  """Training clips as stored (`video_folder.stored_size` a side, cropped by the training
  transforms); the test split centre-cropped to `config.data.resolution`."""
  settings = video_folder.settings_from_config(config.data)
  data_dir = _data_dir(config, workdir)
  _check_same_folder(settings, data_dir, workdir)
  log = video_folder.say if jax.process_index() == 0 else lambda message: None
  source = _built_by_process_0(lambda: video_folder.load(settings, data_dir, split, log))
  if split == "train":
    return source
  return video_folder.CentreCropped(source, settings.resolution)


def _check_same_folder(settings, data_dir: str, workdir: str) -> None:
  """A run keeps the dataset it first built: videos changed since (added, edited, copied
  without their times) would otherwise build a new one with another file split, which a
  resumed run's data position does not fit and an evaluation could score on training
  files. The run's workdir records the dataset; a different one now is one clear error."""
  if not workdir:  # no run to keep a dataset for (a loader built outside a run)
    return
  record = os.path.join(workdir, "folder_dataset.txt")
  directory = video_folder.dataset_directory(data_dir, video_folder.current_name(settings))
  if os.path.exists(record):
    with open(record) as f:
      recorded = f.read().strip()
    if recorded != directory:
      raise video_folder.FolderDataError(
          f"the videos in {settings.path} (or the data settings) changed since this run built "
          f"its dataset {recorded}: its file split and data position no longer hold. Restore "
          f"the videos as they were, or train afresh in a new --workdir.")
  elif jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(record, "w") as f:
      f.write(directory + "\n")


def _folder_train_transforms(config, stage):
  """A random temporal crop, a random `data.resolution` square of the slightly larger stored
  frames (mirrored half the time with `data.random_flip`), resized to the stage's size.

  The crop starts anywhere: `data.crop_first_frame_prob` is for clips that begin in a special
  state (the built-in balls at rest, which presets tune it for); a folder's stored clips are
  cut from videos at arbitrary points."""
  return [pipeline.RandomTemporalCrop(stage.num_frames, 0.0),
          pipeline.RandomCropFlip(config.data.resolution, config.data.random_flip),
          pipeline.Resize(stage.resolution)]


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
    pixel_test_split=_latents_pixel_test_split, train_transforms=_latent_train_transforms))
register_data_source(DataSource(
    "folder", _open_folder, batch_key="video",
    clip_frames=lambda config: config.data.num_frames,
    pixel_test_split=lambda config, workdir: _open_folder(config, workdir, "test"),
    train_transforms=_folder_train_transforms))
