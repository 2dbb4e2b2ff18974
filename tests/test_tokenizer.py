"""Tests for the tokenizer interface, the patch tokenizer and the factory."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from videomar_jax.tokenizers import (PatchTokenizer, Tokenizer, known_tokenizers,
                                     make_tokenizer, num_latent_frames, register_tokenizer,
                                     unit_to_video, video_to_unit)


class _CausalStub(Tokenizer):
  """Minimal concrete tokenizer with a temporal stride, to test the base class."""

  temporal_stride = 4
  spatial_stride = 8
  latent_channels = 16
  latent_scale = 2.0

  def _encode(self, video):
    b, f, h, w, _ = video.shape
    t, lh, lw, c = self.latent_shape(f, h, w)
    return jnp.ones((b, t, lh, lw, c), video.dtype)

  def _decode(self, latents):
    b, t, h, w, _ = latents.shape
    return jnp.broadcast_to(latents[..., :1].mean(), (b, 1 + (t - 1) * 4, h * 8, w * 8, 3))


def _video(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


def test_patch_round_trip_is_exact():
  tokenizer = PatchTokenizer(patch_size=4)
  video = _video((2, 3, 16, 24, 3))
  latents = tokenizer.encode(video)
  assert latents.shape == (2, 3, 4, 6, 48)
  np.testing.assert_array_equal(tokenizer.decode(latents), video)


def test_patch_channel_order_is_dy_dx_rgb():
  p = 2
  video = np.arange(1 * 1 * 4 * 6 * 3, dtype=np.float32).reshape(1, 1, 4, 6, 3)
  latents = np.asarray(PatchTokenizer(patch_size=p).encode(video))
  for i in range(2):
    for j in range(3):
      for dy in range(p):
        for dx in range(p):
          for c in range(3):
            assert latents[0, 0, i, j, (dy * p + dx) * 3 + c] == video[0, 0, p * i + dy,
                                                                        p * j + dx, c]


def test_strides_channels_and_shapes():
  tokenizer = PatchTokenizer(patch_size=4, latent_scale=0.5)
  assert isinstance(tokenizer, Tokenizer)
  assert tokenizer.temporal_stride == 1
  assert tokenizer.spatial_stride == 4
  assert tokenizer.latent_channels == 48
  assert tokenizer.latent_scale == 0.5
  assert tokenizer.num_latent_frames(7) == 7
  assert tokenizer.latent_shape(7, 32, 16) == (7, 8, 4, 48)
  assert PatchTokenizer(patch_size=1).latent_shape(2, 5, 3) == (2, 5, 3, 3)


def test_latent_scale_is_applied_on_encode_and_undone_on_decode():
  video = _video((1, 2, 8, 8, 3), seed=1)
  plain = PatchTokenizer(patch_size=2).encode(video)
  scaled_tokenizer = PatchTokenizer(patch_size=2, latent_scale=0.25)
  scaled = scaled_tokenizer.encode(video)
  np.testing.assert_allclose(scaled, 0.25 * plain, rtol=1e-6)
  np.testing.assert_allclose(scaled_tokenizer.decode(scaled), video, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(scaled_tokenizer.decode(plain), 4.0 * video, rtol=1e-6)


def test_works_under_jit():
  tokenizer = PatchTokenizer(patch_size=4, latent_scale=2.0)
  video = _video((2, 2, 8, 8, 3), seed=2)
  latents = jax.jit(tokenizer.encode)(video)
  np.testing.assert_allclose(latents, tokenizer.encode(video), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(tokenizer.decode)(latents), video, rtol=1e-6, atol=1e-6)


def test_bad_shapes_raise_with_shapes_in_message():
  tokenizer = PatchTokenizer(patch_size=4)
  with pytest.raises(ValueError, match=r"\[B, F, H, W, 3\].*\(2, 8, 8, 3\)"):
    tokenizer.encode(jnp.zeros((2, 8, 8, 3)))
  with pytest.raises(ValueError, match=r"\(1, 2, 8, 8, 4\)"):
    tokenizer.encode(jnp.zeros((1, 2, 8, 8, 4)))
  with pytest.raises(ValueError, match="uint8.*video_to_unit"):
    tokenizer.encode(jnp.zeros((1, 2, 8, 8, 3), jnp.uint8))
  with pytest.raises(ValueError, match=r"10x8.*spatial_stride=4"):
    tokenizer.encode(jnp.zeros((1, 2, 10, 8, 3)))
  with pytest.raises(ValueError, match=r"\[B, T, h, w, 48\].*\(1, 2, 2, 2, 47\)"):
    tokenizer.decode(jnp.zeros((1, 2, 2, 2, 47)))
  with pytest.raises(ValueError, match=r"\(2, 2, 2, 48\)"):
    tokenizer.decode(jnp.zeros((2, 2, 2, 48)))
  with pytest.raises(ValueError, match=r"32x30.*spatial_stride=4"):
    tokenizer.latent_shape(4, 32, 30)
  with pytest.raises(ValueError, match="num_frames"):
    tokenizer.latent_shape(0, 32, 32)
  with pytest.raises(ValueError, match="patch_size"):
    PatchTokenizer(patch_size=0)
  with pytest.raises(ValueError, match="latent_scale"):
    PatchTokenizer(patch_size=2, latent_scale=0.0)


def test_base_class_causal_frames_and_scaling():
  stub = _CausalStub()
  assert num_latent_frames(17, 4) == 5
  assert stub.num_latent_frames(1) == 1
  assert stub.num_latent_frames(17) == 5
  assert stub.latent_shape(9, 64, 32) == (3, 8, 4, 16)
  with pytest.raises(ValueError, match=r"num_frames=16.*temporal_stride=4"):
    stub.num_latent_frames(16)
  with pytest.raises(ValueError, match=r"num_frames=16.*temporal_stride=4"):
    stub.encode(jnp.zeros((1, 16, 64, 64, 3)))
  latents = stub.encode(jnp.zeros((2, 9, 16, 8, 3)))
  assert latents.shape == (2, 3, 2, 1, 16)
  np.testing.assert_array_equal(latents, 2.0)  # raw ones times latent_scale
  np.testing.assert_array_equal(stub.decode(latents), 1.0)  # divided back first
  with pytest.raises(TypeError):
    Tokenizer()  # abstract


def test_unit_conversions():
  pixels = np.arange(256, dtype=np.uint8)
  unit = video_to_unit(pixels)
  assert unit.dtype == jnp.float32
  assert float(unit.min()) == -1.0 and float(unit.max()) == 1.0
  np.testing.assert_array_equal(unit_to_video(unit), pixels)
  out = unit_to_video(jnp.array([-3.0, -1.0, 0.0, 0.999, 1.0, 2.0]))
  assert out.dtype == jnp.uint8
  np.testing.assert_array_equal(out, [0, 0, 128, 255, 255, 255])


def test_factory():
  config = ml_collections.ConfigDict(dict(name="patch", patch_size=4, latent_scale=0.5))
  tokenizer = make_tokenizer(config)
  assert isinstance(tokenizer, PatchTokenizer)
  assert (tokenizer.spatial_stride, tokenizer.latent_channels, tokenizer.latent_scale) == (
      4, 48, 0.5)
  assert make_tokenizer({"name": "patch", "patch_size": 2}).latent_scale == 1.0
  assert "patch" in known_tokenizers()
  with pytest.raises(ValueError, match=r"unknown tokenizer 'stub'.*\['cosmos', 'patch'"):
    make_tokenizer(ml_collections.ConfigDict(dict(name="stub")))
  with pytest.raises(ValueError, match="patch_size"):
    make_tokenizer(ml_collections.ConfigDict(dict(name="patch")))
  with pytest.raises(ValueError, match="already registered"):
    register_tokenizer("patch", lambda config: _CausalStub(), lambda config: None)


def test_a_registered_tokenizer_sizes_the_model_and_trains():
  """A tokenizer added with the public `register_tokenizer` carries its geometry: the model
  is sized from it without building the tokenizer, and the train step runs on it."""
  from conftest import small_config  # pylint: disable=import-outside-toplevel
  from videomar_jax import tokenizers  # pylint: disable=import-outside-toplevel
  from videomar_jax.tokenizers.geometry import TokenizerGeometry  # pylint: disable=import-outside-toplevel
  from videomar_jax.train import setup  # pylint: disable=import-outside-toplevel
  register_tokenizer("halves", lambda config: PatchTokenizer(2, latent_scale=0.5),
                     lambda config: TokenizerGeometry(1, 2, 12))
  try:
    config = small_config()
    config.tokenizer.name = "halves"
    assert setup.make_model(config).token_dim == 12
    assert setup.resolve(config).stages[0].grid == config.stages[0].resolution // 2
    experiment = setup.build(config)
    video = np.zeros((config.batch_size, config.stages[0].num_frames, 8, 8, 3), np.uint8)
    _, metrics = experiment.train_step(experiment.create_state(), {"video": video})
    assert np.isfinite(float(metrics["loss"]))
  finally:
    tokenizers._REGISTRY.pop("halves")  # pylint: disable=protected-access
