"""Cosmos tokenizer directories, latent caching and training/sampling through them.

The tokenizer is the narrow CV4x8x8 network with random weights: what is tested is the
plumbing (a cache holds exactly the tokenizer's latents, in source order; training on it is
training on pixels through the tokenizer; sampling decodes through the run's tokenizer).
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import REPO, small_config
from videomar_jax.data import bouncing_balls, latent_cache
from videomar_jax.sampling.video_generator import VideoGenerator
from videomar_jax.train.setup import restore_weights
from videomar_jax.tokenizers import make_tokenizer, store
from videomar_jax.tokenizers.base import video_to_unit
from videomar_jax.tokenizers.cosmos import get_variant, random_params
from videomar_jax.train import trainer
from videomar_jax.train.loss_report import read_metrics

VARIANT = "CV4x8x8-narrow"
NUM_FRAMES, RESOLUTION = 9, 32  # 1 + 4 * 2 frames -> 3 latent frames of 4 x 4


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  network = get_variant(VARIANT)
  # Norm scales and biases moved off 1 and 0 so that every weight matters.
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(
      lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32),
      random_params(network, seed=0))
  directory = str(tmp_path_factory.mktemp("tokenizer"))
  return store.save(directory, network, params, variant=VARIANT,
                    latent_scale=0.5, source="random test weights")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


DATA = dict(num_train_clips=8, num_test_clips=4, num_frames=NUM_FRAMES,
            resolution=RESOLUTION, num_balls=2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory, tokenizer_dir, data_dir):
  tokenizer = make_tokenizer(_tokenizer_config(tokenizer_dir))
  splits = {s: bouncing_balls.load(data_dir, s, **DATA) for s in ("train", "test")}
  out = str(tmp_path_factory.mktemp("cache"))
  latent_cache.encode_dataset(
      tokenizer, splits, out, num_frames=NUM_FRAMES, resolution=RESOLUTION, flip=True,
      batch_size=3, tokenizer_info={"checkpoint": tokenizer_dir,
                                    "fingerprint": store.fingerprint(tokenizer_dir)},
      source_info={"dataset": "bouncing_balls", "data_dir": data_dir, **DATA})
  return out


def _tokenizer_config(directory, **overrides):
  config = small_config().tokenizer
  config.name, config.variant, config.checkpoint = "cosmos", VARIANT, directory
  config.latent_scale = 0.5
  config.update(overrides)
  return config


def _run_config(data_dir, tokenizer_dir="", **data):
  config = small_config()
  config.tokenizer = _tokenizer_config(tokenizer_dir)
  config.model.patch_size = 1
  config.data.data_dir = data_dir
  for key, value in DATA.items():
    config.data[key] = value
  config.data.update(data)
  config.stages = [ml_collections.ConfigDict(dict(num_frames=NUM_FRAMES, resolution=RESOLUTION,
                                                  steps=2, batch_size=0))]
  return config


def test_tokenizer_directory_round_trip_and_strict_loading(tmp_path, tokenizer_dir):
  loaded = store.load(tokenizer_dir)
  assert loaded.variant == VARIANT and loaded.latent_scale == 0.5
  assert loaded.network == get_variant(VARIANT)
  # A weight removed, one added and one mis-shaped: one error naming all three.
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  flat = traverse_util.flatten_dict(loaded.params, sep="/")
  names = sorted(flat)
  del flat[names[0]]
  flat["extra/kernel"] = np.zeros(3, np.float32)
  flat[names[1]] = np.zeros((2, 2), np.float32)
  with pytest.raises(store.TokenizerStoreError) as error:
    store.save(str(tmp_path / "bad"), loaded.network, traverse_util.unflatten_dict(
        flat, sep="/"), variant=VARIANT, latent_scale=0.5, source="")
  for name in (names[0], "extra/kernel", names[1]):
    assert name in str(error.value)
  assert not os.path.exists(tmp_path / "bad" / store.CONFIG_FILE)
  # A truncated weights file is named.
  broken = store.copy(tokenizer_dir, str(tmp_path / "broken"))
  path = os.path.join(broken, store.PARAMS_FILE)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(store.TokenizerStoreError, match="truncated or corrupt"):
    store.load(broken)


def test_cosmos_tokenizer_from_config_checks_the_variant(tokenizer_dir):
  tokenizer = make_tokenizer(_tokenizer_config(tokenizer_dir))
  assert (tokenizer.temporal_stride, tokenizer.spatial_stride) == (4, 8)
  assert tokenizer.latent_shape(NUM_FRAMES, RESOLUTION, RESOLUTION) == (3, 4, 4, 16)
  with pytest.raises(ValueError, match="checkpoint is empty"):
    make_tokenizer(_tokenizer_config(""))
  with pytest.raises(ValueError, match="8x8x8"):
    make_tokenizer(_tokenizer_config(tokenizer_dir, variant="CV8x8x8-narrow"))
  with pytest.raises(ValueError, match="num_frames=8"):
    tokenizer.encode(jnp.zeros((1, 8, RESOLUTION, RESOLUTION, 3)))


def test_cache_holds_the_tokenizer_latents_in_source_order(cache_dir, tokenizer_dir,
                                                           data_dir):
  tokenizer = make_tokenizer(_tokenizer_config(tokenizer_dir))
  clips = bouncing_balls.load(data_dir, "test", **DATA)
  cached, meta = latent_cache.load(cache_dir, "test")
  assert meta["latent_shape"] == [3, 4, 4, 16] and meta["splits"] == {"train": 8, "test": 4}
  video = np.stack([clips[i]["frames"] for i in range(len(clips))])
  expected = np.asarray(tokenizer.encode(video_to_unit(video)))
  mirrored = np.asarray(tokenizer.encode(video_to_unit(video[:, :, :, ::-1])))
  for i in range(len(clips)):
    assert cached[i]["index"] == i
    np.testing.assert_allclose(cached[i]["latents"], expected[i], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cached[i]["latents_flipped"], mirrored[i], rtol=1e-5,
                               atol=1e-5)
  # Mirroring latents is not encoding the mirror: the flipped copies are real encodings.
  assert not np.allclose(cached[0]["latents_flipped"], cached[0]["latents"][:, :, ::-1])
  with pytest.raises(latent_cache.LatentCacheError, match="already holds"):
    latent_cache.encode_dataset(tokenizer, {"test": clips}, cache_dir, num_frames=NUM_FRAMES,
                                resolution=RESOLUTION, flip=False)


def test_training_on_cached_latents_equals_training_on_pixels(tmp_path, cache_dir,
                                                              tokenizer_dir, data_dir):
  """Same model, same loss: the first step's loss (and the second's) agree."""
  pixels = _run_config(data_dir, tokenizer_dir)
  latents = _run_config(data_dir, "", dataset="latents", latents_dir=cache_dir,
                        random_flip=False)
  trainer.train(pixels, str(tmp_path / "pixels"))
  trainer.train(latents, str(tmp_path / "latents"))
  from_pixels = read_metrics(str(tmp_path / "pixels"))
  from_latents = read_metrics(str(tmp_path / "latents"))
  assert list(from_pixels) == list(from_latents) == [1, 2]
  for step in (1, 2):
    np.testing.assert_allclose(from_latents[step]["loss"], from_pixels[step]["loss"],
                               rtol=1e-5)
  # The latents run found its tokenizer through the cache and keeps its own copy.
  own = str(tmp_path / "latents" / "tokenizer")
  assert store.fingerprint(own) == store.fingerprint(tokenizer_dir)
  with open(tmp_path / "latents" / "config.json") as f:
    assert json.load(f)["tokenizer"]["checkpoint"] == own


def test_sampling_decodes_through_the_runs_tokenizer(tmp_path, cache_dir, data_dir):
  workdir = str(tmp_path / "run")
  config = _run_config(data_dir, "", dataset="latents", latents_dir=cache_dir,
                       random_flip=True)
  config.stages[0].steps = 3  # past a log step (every 2), which once clobbered the batch key
  trainer.train(config, workdir)
  assert list(read_metrics(workdir)) == [1, 2, 3]
  moved = str(tmp_path / "moved")
  os.rename(workdir, moved)  # the recorded tokenizer path is gone; the run's copy is found
  config, params, _ = restore_weights(moved)
  generator = VideoGenerator(config, params)
  assert config.tokenizer.checkpoint == os.path.join(moved, "tokenizer")
  tokens = jax.random.normal(jax.random.key(0), (1, 3, 16, 16))
  video = generator.pixels(tokens, (4, 4))
  direct = make_tokenizer(_tokenizer_config(os.path.join(moved, "tokenizer")))
  expected = np.asarray(direct.decode(tokens.reshape(1, 3, 4, 4, 16)))
  assert video.shape == (1, NUM_FRAMES, RESOLUTION, RESOLUTION, 3)
  np.testing.assert_array_equal(video, np.asarray(
      jnp.clip(jnp.round((expected + 1) * 127.5), 0, 255).astype(jnp.uint8)))


def test_cache_mismatches_are_named(tmp_path, cache_dir, tokenizer_dir, data_dir):
  config = _run_config(data_dir, "", dataset="latents", latents_dir=cache_dir,
                       random_flip=False)
  config.stages[0].resolution = 16
  with pytest.raises(latent_cache.LatentCacheError, match="encoded at 32px"):
    trainer.train(config, str(tmp_path / "a"))
  config = _run_config(data_dir, "", dataset="latents", latents_dir=cache_dir,
                       random_flip=False)
  config.tokenizer.latent_scale = 1.0
  with pytest.raises(latent_cache.LatentCacheError, match="scaled by 0.5"):
    trainer.train(config, str(tmp_path / "b"))
  with pytest.raises(latent_cache.LatentCacheError, match="no latent cache"):
    latent_cache.load(str(tmp_path), "train")


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_encode_decode_and_bad_sizes(tmp_path, tokenizer_dir):
  rng = np.random.default_rng(0)
  video = rng.integers(0, 256, (NUM_FRAMES, RESOLUTION, 48, 3), dtype=np.uint8)
  np.save(tmp_path / "clip.npy", video)
  result = _cli("tokenizer", "encode", f"--checkpoint={tokenizer_dir}",
                f"--input={tmp_path / 'clip.npy'}", f"--output={tmp_path / 'z.npy'}")
  assert result.returncode == 0, result.stderr
  latents = np.load(tmp_path / "z.npy")
  assert latents.shape == (3, 4, 6, 16)
  tokenizer = make_tokenizer(_tokenizer_config(tokenizer_dir))
  expected = np.asarray(tokenizer.encode(video_to_unit(video[None])))[0]
  np.testing.assert_allclose(latents, expected, rtol=1e-4, atol=1e-4)
  result = _cli("tokenizer", "decode", f"--checkpoint={tokenizer_dir}",
                f"--input={tmp_path / 'z.npy'}", f"--output={tmp_path / 'out.gif'}")
  assert result.returncode == 0, result.stderr
  assert os.path.getsize(tmp_path / "out.gif") > 0
  # 8 frames do not fit the 4x temporal stride (1 + 4k): a one-line error, no traceback.
  np.save(tmp_path / "bad.npy", video[:8])
  result = _cli("tokenizer", "encode", f"--checkpoint={tokenizer_dir}",
                f"--input={tmp_path / 'bad.npy'}", f"--output={tmp_path / 'y.npy'}")
  assert result.returncode == 1
  assert "num_frames=8" in result.stderr and "Traceback" not in result.stderr
  result = _cli("tokenizer", "encode", f"--checkpoint={tmp_path / 'nowhere'}",
                f"--input={tmp_path / 'clip.npy'}", f"--output={tmp_path / 'y.npy'}")
  assert result.returncode == 1 and "no tokenizer directory" in result.stderr


def test_cli_convert_from_diffusers_and_original_layouts(tmp_path):
  """A diffusers model directory and an original-layout .pt both convert to a tokenizer
  directory that encodes like the PyTorch model. The .pt is laid out as NVIDIA's own network
  saves it: with the convs of its switched-off resamplers, which are dropped with a note."""
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import AutoencoderKLCosmos  # pylint: disable=import-outside-toplevel
  from videomar_jax.tokenizers.cosmos.keys import diffusers_to_original  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  network = get_variant(VARIANT)
  reference = AutoencoderKLCosmos(**network.to_diffusers()).eval()
  reference.save_pretrained(str(tmp_path / "diffusers"))
  original = diffusers_to_original({k: v.numpy() for k, v in reference.state_dict().items()})
  from nvidia_cosmos_reference import CausalContinuousVideoTokenizer  # pylint: disable=import-outside-toplevel
  with torch.device("meta"):
    nvidia = CausalContinuousVideoTokenizer(network).state_dict()
  switched_off = {k: np.zeros(v.shape, np.float32) for k, v in nvidia.items() if k not in original}
  assert switched_off and set(original) <= set(nvidia)
  original.update(switched_off)
  torch.save({k: torch.from_numpy(v.copy()) for k, v in original.items()},
             str(tmp_path / "original.pt"))
  video = np.random.default_rng(0).uniform(-1, 1, (1, NUM_FRAMES, RESOLUTION, RESOLUTION, 3))
  with torch.no_grad():
    expected = reference.encode(torch.from_numpy(video.transpose(0, 4, 1, 2, 3)).float())
  expected = expected.latent_dist.mode().numpy().transpose(0, 2, 3, 4, 1)
  for name, args in (("a", [f"--torch={tmp_path / 'diffusers'}"]),
                     ("b", [f"--torch={tmp_path / 'original.pt'}", f"--variant={VARIANT}"])):
    result = _cli("tokenizer", "convert", *args, f"--out={tmp_path / name}",
                  "--latent_scale=0.5")
    assert result.returncode == 0, result.stderr
    if name == "b":
      assert f"dropped {len(switched_off)} tensors of switched-off resampler" in result.stdout
    tokenizer = make_tokenizer(_tokenizer_config(str(tmp_path / name)))
    latents = np.asarray(tokenizer.encode(jnp.asarray(video, jnp.float32))) / 0.5
    assert np.max(np.abs(latents - expected)) <= 1e-4 * np.max(np.abs(expected))
  # A checkpoint for another variant: one error naming the mismatched weights.
  result = _cli("tokenizer", "convert", f"--torch={tmp_path / 'original.pt'}",
                "--variant=CV8x8x8-narrow", f"--out={tmp_path / 'c'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "c" / store.CONFIG_FILE)


def test_cli_data_encode_writes_a_cache_the_trainer_reads(tmp_path, tokenizer_dir):
  result = _cli("data", "encode", f"--tokenizer={tokenizer_dir}", "--dataset=bouncing_balls",
                f"--data_dir={tmp_path / 'data'}", f"--out={tmp_path / 'cache'}",
                "--num_train_clips=6", "--num_test_clips=2", f"--num_frames={NUM_FRAMES}",
                f"--resolution={RESOLUTION}", "--flip", "--encode_batch_size=4")
  assert result.returncode == 0, result.stderr
  source, meta = latent_cache.load(str(tmp_path / "cache"), "train")
  assert len(source) == 6 and meta["flipped"] and meta["latent_shape"] == [3, 4, 4, 16]
  assert meta["tokenizer"]["fingerprint"] == store.fingerprint(tokenizer_dir)
  assert source[5]["latents_flipped"].shape == (3, 4, 4, 16)
  result = _cli("data", "encode", f"--tokenizer={tokenizer_dir}", "--dataset=bouncing_balls",
                f"--data_dir={tmp_path / 'data'}", f"--out={tmp_path / 'cache2'}",
                "--num_frames=8", f"--resolution={RESOLUTION}")
  assert result.returncode == 1 and "num_frames=8" in result.stderr


def test_bench_tokenizer_counts_parameters_and_times_both_directions():
  from videomar_jax.tools.bench_tokenizer import bench_tokenizer  # pylint: disable=import-outside-toplevel
  result = bench_tokenizer(VARIANT, num_frames=NUM_FRAMES, resolution=RESOLUTION, repeats=1)
  parameters = result["parameters"]
  assert parameters["total"] == sum(v for k, v in parameters.items() if k != "total")
  assert parameters["encoder"] > 0 and parameters["decoder"] > 0
  assert result["latent_shape"] == [1, 3, 4, 4, 16]
  assert result["encode_frames_per_s"] > 0 and result["decode_frames_per_s"] > 0
