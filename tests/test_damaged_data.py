"""Damaged dataset files: every kind names the file (or folder) and how to rebuild, as one
line at the command line; a run that meets damaged data mid-way saves its state first."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, small_config
from videomar_jax.data import sources
from videomar_jax.data.integrity import DatasetFileError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("data")
  config = small_config()
  config.data.data_dir = str(data_dir)
  sources.open_split(config, "", "train")
  return data_dir


@pytest.fixture
def data(built, tmp_path):
  shutil.copytree(built, tmp_path / "data")
  config = small_config()
  config.data.data_dir = str(tmp_path / "data")
  (shard,) = glob.glob(f"{tmp_path}/data/**/*-train.array_record-*", recursive=True)
  return config, shard


def _overwrite_middle(path: str) -> None:
  with open(path, "r+b") as f:
    f.seek(3000)
    f.write(b"\xff" * 400)


def _damage(shard: str, how: str) -> None:
  if how == "bytes overwritten in the middle":
    _overwrite_middle(shard)
  elif how == "truncated":
    with open(shard, "r+b") as f:
      f.truncate(os.path.getsize(shard) // 2)
  elif how == "empty":
    open(shard, "wb").close()
  elif how == "missing shard":
    os.remove(shard)
  elif how == "missing dataset_info.json (interrupted build)":
    os.remove(os.path.join(os.path.dirname(shard), "dataset_info.json"))


@pytest.mark.parametrize("how", ["bytes overwritten in the middle", "truncated", "empty",
                                 "missing shard",
                                 "missing dataset_info.json (interrupted build)"])
def test_each_kind_of_damage_names_the_file_and_the_fix(data, how):
  config, shard = data
  _damage(shard, how)
  with pytest.raises(DatasetFileError) as info:
    source = sources.open_split(config, "", "train")
    for i in range(len(source)):  # damage in the middle shows when its record is read
      source[i]
  message = str(info.value)
  folder = os.path.dirname(os.path.dirname(shard))
  assert (shard in message) or (folder in message), message
  assert "Delete" in message and "run again" in message


def _train(workdir, data_dir, steps):
  return subprocess.run(
      [sys.executable, "-m", "videomar_jax.cli.main", "train",
       f"--config={REPO}/configs/videomar.py:tiny", f"--workdir={workdir}",
       f"--config.data.data_dir={data_dir}", "--config.data.num_train_clips=24",
       "--config.data.num_test_clips=4", "--config.data.num_frames=6",
       "--config.data.resolution=16", "--config.batch_size=4", "--config.model.width=32",
       "--config.model.depth=2", "--config.model.num_heads=2", "--config.head.width=32",
       "--config.head.depth=1", f"--config.stages[0].steps={steps}",
       "--config.stages[0].num_frames=3", "--config.stages[0].resolution=16",
       "--config.stages[1].steps=1", "--config.stages[1].num_frames=3",
       "--config.stages[1].resolution=16", "--config.train.checkpoint_every=4",
       "--config.train.log_every=2"],
      capture_output=True, text=True, timeout=600, cwd=REPO,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO})


def test_a_run_that_meets_damaged_data_saves_first_and_names_the_file(data, tmp_path):
  config, shard = data
  data_dir = config.data.data_dir
  workdir = str(tmp_path / "run")
  first = _train(workdir, data_dir, steps=3)  # 4 steps in all, checkpoint 4
  assert first.returncode == 0, first.stderr
  _overwrite_middle(shard)
  source = sources.open_split(config, "", "train")  # opens: first and last records are fine
  assert len(source) == 24
  second = _train(workdir, data_dir, steps=15)  # 2+ epochs: every record is read
  assert second.returncode == 1, second.stderr
  assert "Traceback" not in second.stderr
  errors = [l for l in second.stderr.splitlines() if l.startswith("ERROR: ")]
  assert len(errors) == 1, second.stderr
  assert f"of {shard} cannot be read" in errors[0] and "the file is damaged" in errors[0]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = max(json.loads(line)["step"] for line in f)
  saved = max(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/[0-9]*"))
  assert saved == last >= 4  # everything trained before the damaged record is kept
