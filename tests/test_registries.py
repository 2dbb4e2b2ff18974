"""What grows is one registry entry: a data source and a loss mode added from outside the
package train, are validated and are counted like the built-in ones."""

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import small_config
from videomar_jax.data import sources
from videomar_jax.errors import ConfigError
from videomar_jax.losses import next_frame
from videomar_jax.tools import flops
from videomar_jax.train import setup, trainer


class _Stripes:
  """A random-access source of 8-frame clips of moving stripes."""

  def __init__(self, count):
    self.count = count

  def __len__(self):
    return self.count

  def __getitem__(self, i):
    x = (np.arange(16)[None, None, :] + np.arange(8)[:, None, None] + i) % 4
    frames = np.broadcast_to((x * 60)[..., None], (8, 16, 16, 3)).astype(np.uint8)
    return {"frames": np.ascontiguousarray(frames)}


@pytest.fixture
def stripes():
  sources.register_data_source(sources.DataSource(
      "stripes", lambda config, workdir, split: _Stripes(8 if split == "train" else 2),
      batch_key="video", clip_frames=lambda config: 8))
  yield
  sources._SOURCES.pop("stripes")  # pylint: disable=protected-access


def test_a_registered_data_source_trains(stripes, tmp_path):
  del stripes
  config = small_config()
  config.data.dataset = "stripes"
  config.stages[1].num_frames = 9
  with pytest.raises(ConfigError, match=r"stages\[1\].num_frames 9 > the dataset's clips "
                                        r"\(8 frames\)"):
    trainer.validate(config)
  config.stages[1].num_frames = 4
  summary = trainer.train(config, str(tmp_path / "run"))
  assert summary == {"status": "done", "step": 8}


def test_an_unknown_data_source_names_the_known_ones():
  config = small_config()
  config.data.dataset = "bouncing_bals"
  with pytest.raises(ConfigError, match=r"'bouncing_bals' is not known; known: "
                                        r"\['bouncing_balls', 'folder', 'latents'"):
    trainer.validate(config)


def _last_frame_inputs(tokens, context_view, draws, *, num_cond, attn_mask,
                       temporal_attention, own_context):
  del num_cond, temporal_attention, own_context
  b, t, n, _ = tokens.shape
  is_last = (jnp.arange(t) == t - 1)[None, :, None]
  is_masked = jnp.broadcast_to(is_last, (b, t, n)) & draws.token_mask
  return jnp.where(is_last[..., None], tokens, context_view), is_masked, attn_mask


@pytest.fixture
def last_frame_mode():
  """A loss that supervises only the clip's last frame (a paper mode with k fixed)."""
  next_frame.register_loss_mode(next_frame.LossMode(
      "last_frame", sequence_frames=lambda t, n_cond: (np.arange(t), np.zeros(t, bool)),
      supervised_frames=lambda t, n_cond: 1, inputs=_last_frame_inputs,
      outputs=lambda z, tokens, draws, n_cond: (z[:, -1:], tokens[:, -1:])))
  yield
  next_frame._LOSS_MODES.pop("last_frame")  # pylint: disable=protected-access


def test_a_registered_loss_mode_trains_and_is_counted(last_frame_mode):
  del last_frame_mode
  config = small_config()
  config.loss.mode = "last_frame"
  trainer.validate(config)
  shape = flops.sequence_shape(config, 4, 16)
  assert (shape["supervised_frames"], shape["sequence_length"]) == (1, 4 * 16)
  assert setup.resolve(config).stages[1].supervised_frames == 1
  experiment = setup.build(config)
  video = np.random.default_rng(0).integers(0, 256, (4, 3, 16, 16, 3), np.uint8)
  state, metrics = experiment.train_step(experiment.create_state(), {"video": video})
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1
  assert float(metrics["masked_fraction"]) > 0


def test_an_unknown_loss_mode_is_a_config_error():
  config = small_config()
  config.loss.mode = "paperr"
  with pytest.raises(ConfigError, match=r"loss.mode 'paperr' not in \('paper', 'all_frames', "
                                        r"'mar'"):
    trainer.validate(config)
  with pytest.raises(ValueError, match="already registered"):
    next_frame.register_loss_mode(next_frame.loss_mode("paper"))
