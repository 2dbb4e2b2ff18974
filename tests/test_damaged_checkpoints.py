"""A damaged newest checkpoint (a truncated data file, deleted metadata, an empty newer step
folder) is skipped with a warning for the newest one that restores: by training (which
moves it aside, never deleting it) and by sampling (which leaves it where it is). When none
restores, one line says so. A checkpoint that cannot be written is one line too."""

import glob
import os
import resource
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO, small_config
from videomar_jax.train import setup, trainer
from videomar_jax.train.checkpoint import NoRestorableCheckpointError
from videomar_jax.train.loss_report import read_metrics


def _config(data_dir, steps=(4, 4)):
  config = small_config()
  config.data.data_dir = data_dir
  config.stages[0].steps, config.stages[1].steps = steps
  config.train.checkpoint_every = 2
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 8-step run (checkpoints 4, 6, 8), copied afresh for every test."""
  root = tmp_path_factory.mktemp("trained")
  config = _config(str(root / "data"))
  trainer.train(config, str(root / "run"))
  return root


@pytest.fixture
def run(trained, tmp_path):
  subprocess.run(["cp", "-a", str(trained / "run"), str(tmp_path / "run")], check=True)
  return str(tmp_path / "run"), str(trained / "data")


def _damage(step_dir: str, how: str) -> None:
  if how == "truncated data files":
    # Every array data file (which one holds which array is Orbax's choice).
    for path in glob.glob(f"{step_dir}/state/**/d/*", recursive=True):
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  elif how == "deleted metadata":
    os.remove(f"{step_dir}/state/_METADATA")
  elif how == "empty newer step folder":
    os.makedirs(step_dir)


DAMAGE = ["truncated data files", "deleted metadata", "empty newer step folder"]


def _steps(checkpoints: str) -> list[int]:
  return sorted(int(os.path.basename(p)) for p in glob.glob(f"{checkpoints}/[0-9]*")
                if os.path.basename(p).isdigit())


# (Sampling reads only the weights, through the array files themselves: a step whose state
# metadata was deleted still gives them, so that kind is a training-only test.)
@pytest.mark.parametrize("how", [DAMAGE[0], DAMAGE[2]])
def test_sampling_skips_a_damaged_newest_checkpoint_and_leaves_it(run, how, capsys):
  workdir, _ = run
  damaged = 10 if how.startswith("empty") else 8
  _damage(f"{workdir}/checkpoints/{damaged}", how)
  _, params, step = setup.restore_weights(workdir)
  assert step == (8 if damaged == 10 else 6)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(params))
  err = capsys.readouterr().err
  assert f"checkpoint {workdir}/checkpoints/{damaged} cannot be restored" in err
  assert f"using checkpoint {step}, the newest that restores; damaged: {damaged} (left" in err
  assert os.path.isdir(f"{workdir}/checkpoints/{damaged}")  # nothing moved or deleted
  with pytest.raises(NoRestorableCheckpointError, match=f"checkpoints/{damaged}"):
    setup.restore_weights(f"{workdir}/checkpoints/{damaged}")  # asked for by name


@pytest.mark.parametrize("how", DAMAGE[:2])
def test_training_resumes_from_the_newest_good_step_and_keeps_the_damaged_one(run, how,
                                                                             capsys):
  workdir, data_dir = run
  _damage(f"{workdir}/checkpoints/8", how)
  summary = trainer.train(_config(data_dir, steps=(4, 6)), workdir)
  assert summary == {"status": "done", "step": 10}
  err = capsys.readouterr().err
  assert f"checkpoint {workdir}/checkpoints/8 cannot be restored" in err
  assert "using checkpoint 6, the newest that restores; damaged: 8; moved to" in err
  assert os.path.isdir(f"{workdir}/checkpoints/damaged/8")  # kept for inspection
  assert _steps(f"{workdir}/checkpoints") == [6, 8, 10]  # 8 written anew from step 6
  assert sorted(read_metrics(workdir)) == list(range(1, 11))  # one row per step


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", *args],
                        capture_output=True, text=True, timeout=300, cwd=REPO,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})


def test_when_no_checkpoint_restores_sample_says_so_in_one_line(run, tmp_path):
  workdir, _ = run
  for step in _steps(f"{workdir}/checkpoints"):
    _damage(f"{workdir}/checkpoints/{step}", "truncated data files")
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "first.png")
  result = _cli("sample", f"--workdir={workdir}", f"--image={tmp_path}/first.png",
                f"--out={tmp_path}/out.mp4")
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("ERROR: ")]
  assert len(errors) == 1, result.stderr
  assert "none of the checkpoints in" in errors[0] and "steps 8, 6, 4" in errors[0]
  assert _steps(f"{workdir}/checkpoints") == [4, 6, 8]  # all still there


def _limit_file_size():
  # Writes past 64 KiB fail with EFBIG (the signal that would kill the process is ignored):
  # a real write failure, as on a full disk, for any user.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_a_checkpoint_that_cannot_be_written_is_one_line(run):
  workdir, data_dir = run
  config = _config(data_dir, steps=(4, 6))
  args = ["train", f"--config={REPO}/configs/videomar.py:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}"]
  for key in ("num_train_clips", "num_test_clips", "num_frames", "resolution"):
    args.append(f"--config.data.{key}={config.data[key]}")
  for key in ("width", "depth", "num_heads", "scan_layers", "pos_embed_size", "rope_base"):
    args.append(f"--config.model.{key}={config.model[key]}")
  for key in ("width", "depth", "diffusion_batch_mul", "num_sampling_steps"):
    args.append(f"--config.head.{key}={config.head[key]}")
  args += [f"--config.loss.mode={config.loss.mode}", f"--config.batch_size={config.batch_size}",
           f"--config.optim.warmup_steps={config.optim.warmup_steps}",
           "--config.data.crop_first_frame_prob=0.0", "--config.train.checkpoint_every=2",
           "--config.train.log_every=2",
           # No compilation cache: under the 64 KiB limit its writes would fail or not
           # depending on what other tests left in the suite's shared cache.
           "--config.train.compilation_cache_dir=none"]
  for i, stage in enumerate(config.stages):
    args += [f"--config.stages[{i}].{key}={stage[key]}" for key in stage]
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  result = subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          preexec_fn=_limit_file_size,
                          env={**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})
  assert result.returncode == 1, result.stdout + result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("ERROR: ")]
  assert len(errors) == 1, result.stderr
  assert f"could not write checkpoint 10 to {workdir}/checkpoints" in errors[0]
  assert "checkpoint 8 is intact" in errors[0]
  assert _steps(f"{workdir}/checkpoints") == [4, 6, 8]
  assert setup.restore_weights(workdir)[2] == 8  # and it still restores
  # With room again, the same run resumes from 8 and writes 10 (Orbax's leftover
  # temporary folder of the failed save is no obstacle).
  assert trainer.train(_config(data_dir, steps=(4, 6)), workdir)["step"] == 10
  assert _steps(f"{workdir}/checkpoints") == [6, 8, 10]
