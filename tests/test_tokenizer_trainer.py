"""Training a Cosmos tokenizer from scratch: loss goes down, resume is exact, the result is a
tokenizer directory with a held-out PSNR report."""

import glob
import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from conftest import REPO
from videomar_jax.errors import ConfigError
from videomar_jax.tokenizers import store
from videomar_jax.tokenizers.cosmos_tokenizer import CosmosTokenizer
from videomar_jax.train import loop, tokenizer_trainer
from videomar_jax.train.loss_report import read_metrics


def _config(data_dir, **overrides):
  spec = importlib.util.spec_from_file_location("tokenizer_config",
                                                os.path.join(REPO, "configs", "tokenizer.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("CV4x8x8-narrow")
  config.num_devices = 1
  config.batch_size = 4
  config.steps = 12
  config.optim.warmup_steps = 2
  config.data.data_dir = data_dir
  config.data.num_train_clips = 16
  config.data.num_test_clips = 4
  config.eval.num_clips = 4
  config.train.log_every = 1
  config.train.eval_every = 6
  config.train.checkpoint_every = 6
  config.update(overrides)
  return config


def test_trains_resumes_exactly_and_exports(tmp_path):
  data_dir = str(tmp_path / "data")
  workdir = str(tmp_path / "run")
  config = _config(data_dir)
  config.train.profile_steps = (2, 4)
  summary = tokenizer_trainer.train(config, workdir)
  first = read_metrics(workdir)
  assert list(first) == list(range(1, 13))
  losses = [first[s]["loss"] for s in range(1, 13)]
  assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses

  # The summary, the report and a loadable tokenizer directory.
  assert [e["step"] for e in summary["evaluations"]] == [6, 12]
  assert np.isfinite(summary["held_out_psnr"]) and summary["held_out_clips"] == 4
  with open(os.path.join(workdir, "report", "tokenizer_summary.json")) as f:
    assert json.load(f)["held_out_psnr"] == pytest.approx(summary["held_out_psnr"])
  assert os.path.isfile(os.path.join(workdir, "report",
                                     "reconstruction_00_truth_vs_recon.gif"))
  tokenizer = CosmosTokenizer.from_directory(os.path.join(workdir, "tokenizer"))
  assert tokenizer.latent_scale == pytest.approx(summary["latent_scale"])
  assert store.load(os.path.join(workdir, "tokenizer")).variant == "CV4x8x8-narrow"
  # train.profile_steps=(2, 4): a jax.profiler trace of steps 3..4 under <workdir>/profile.
  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1, traces

  # Drop the last checkpoint: the run resumes at step 6 and repeats steps 7..12 exactly
  # (same parameters, optimiser state and data-iterator position).
  shutil.rmtree(os.path.join(workdir, "checkpoints", "12"))
  tokenizer_trainer.train(_config(data_dir), workdir)
  again = read_metrics(workdir)
  for step in range(7, 13):
    np.testing.assert_allclose(again[step]["loss"], first[step]["loss"], rtol=1e-6)


def test_non_finite_loss_stops_without_overwriting(tmp_path):
  config = _config(str(tmp_path / "data"), steps=4)
  config.loss.l2_weight = float("nan")
  with pytest.raises(loop.NonFiniteLossError, match="non-finite"):
    tokenizer_trainer.train(config, str(tmp_path / "run"))
  assert not os.path.exists(os.path.join(tmp_path, "run", "tokenizer"))


def test_bad_clip_length_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"1 \+ k \* 4"):
    tokenizer_trainer.train(_config(str(tmp_path / "data"), num_frames=8), str(tmp_path / "r"))


@pytest.mark.parametrize("window, expected", [((4, 2), "got 4,2"),
                                              ((12, 14), "starts after the last step (12)")])
def test_bad_profile_window_is_named(tmp_path, window, expected):
  config = _config(str(tmp_path / "data"))
  config.train.profile_steps = window
  with pytest.raises(ConfigError, match="config.train.profile_steps") as info:
    tokenizer_trainer.train(config, str(tmp_path / "r"))
  assert expected in str(info.value)
