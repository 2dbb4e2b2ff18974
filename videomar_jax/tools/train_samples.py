"""Videos for TensorBoard while training: the `sample_fn` that `videomar train` hands the
trainer when `config.train.sample_every` > 0.

It sits above `train` and `sampling` (the trainer may not import the sampler). From the
first frame of the first `config.train.sample_clips` held-out clips, the given weights
generate a clip as long as the curriculum stage being trained, at its resolution, with
`config.train.sample_steps` unmasking steps per frame and a fixed seed: samples of
different steps differ by the weights alone.

The first frames: the data source's pixel test split (the built-in balls, or the clips a
latent cache was encoded from); failing that, for cached latents, the first latent frame of
the cache's test split (its train split if it has none) decoded by the run's tokenizer.
"""

from collections.abc import Callable

import ml_collections
import numpy as np

from videomar_jax.data import latent_cache, pipeline, sources
from videomar_jax.errors import ConfigError, UserError
from videomar_jax.sampling.generate import SamplerSettings
from videomar_jax.sampling.video_generator import VideoGenerator
from videomar_jax.tokenizers import make_tokenizer, unit_to_video
from videomar_jax.train import setup


def make_sample_fn(config: ml_collections.ConfigDict,
                   workdir: str) -> Callable[[dict, int], np.ndarray]:
  """`sample_fn(params, step)` -> uint8 clips [B, F, H, W, 3], the first frame given.

  Nothing is read before the first call, which every process makes at the same step (a
  multi-process run opens its dataset collectively)."""
  if config.train.sample_clips < 1 or config.train.sample_steps < 1:
    raise ConfigError(f"config.train.sample_clips={config.train.sample_clips} and "
                      f"sample_steps={config.train.sample_steps} must be >= 1 when "
                      "config.train.sample_every is set.")
  entry = sources.data_source(config)
  if entry.pixel_test_split is None and entry.batch_key != "latents":
    raise _no_clips(config)  # now, not after the first sample_every steps
  stages = setup.resolve(config).stages
  causal = config.model.get("temporal_attention", "causal") == "causal"
  first = {}  # resolution -> uint8 [B, 1, R, R, 3]

  def sample_fn(params, step: int) -> np.ndarray:
    stage = next((s for s in stages if s.start < step <= s.end), stages[-1])
    if stage.resolution not in first:
      first[stage.resolution] = first_frames(config, workdir, config.train.sample_clips,
                                             stage.resolution)
    generator = VideoGenerator(config, params)
    tokens_per_frame = (stage.resolution // generator.stride) ** 2
    settings = SamplerSettings(
        num_frames=generator.tokenizer.num_latent_frames(stage.num_frames),
        num_steps=min(config.train.sample_steps, tokens_per_frame),
        mode="kv_cache" if causal else "no_cache")
    video, _ = generator(first[stage.resolution], settings, seed=0)
    return video

  return sample_fn


def first_frames(config: ml_collections.ConfigDict, workdir: str, num_clips: int,
                 resolution: int) -> np.ndarray:
  """uint8 [num_clips, 1, resolution, resolution, 3]: the first frames samples start from."""
  entry = sources.data_source(config)
  split = None
  if entry.pixel_test_split is not None:
    try:
      split = entry.pixel_test_split(config, workdir)
    except ConfigError:  # e.g. a latent cache of other clips than the built-in balls
      split = None
    except UserError:  # e.g. a video folder too small to hold out a file: its train clips
      split = sources.open_split(config, workdir, "train")
  if split is not None:
    _check_count(split, num_clips, "the held-out split")
    return np.stack([pipeline.resize_video(split[i]["frames"][:1], resolution)
                     for i in range(num_clips)])
  if entry.batch_key != "latents":
    raise _no_clips(config)
  meta = latent_cache.read_meta(config.data.latents_dir)
  split_name = "test" if "test" in meta["splits"] else "train"
  split = sources.open_split(config, workdir, split_name)
  _check_count(split, num_clips, f"the latent cache's {split_name} split")
  latents = np.stack([np.asarray(split[i]["latents"][:1], np.float32)
                      for i in range(num_clips)])
  return np.asarray(unit_to_video(make_tokenizer(config.tokenizer).decode(latents)))[:, :1]


def _no_clips(config) -> ConfigError:
  return ConfigError(f"config.train.sample_every: data.dataset={config.data.dataset!r} has no "
                     "clips to start samples from; set config.train.sample_every=0.")


def _check_count(split, num_clips: int, name: str) -> None:
  if len(split) < num_clips:
    raise ConfigError(f"config.train.sample_clips={num_clips}, but {name} has only "
                      f"{len(split)} clips.")
