"""What long (TPU) runs rely on: asynchronous checkpoints, the persistent compilation cache,
JAX's multi-host preemption service and sample videos in TensorBoard."""

import contextlib
import glob
import json
import os
import resource
import signal
import struct
import subprocess

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils

from conftest import small_config
from test_trainer import _has_checkpoint, _train_command, _wait_for
from videomar_jax.data import pipeline
from videomar_jax.tools import train_samples
from videomar_jax.train import compilation_cache, loop, setup, trainer
from videomar_jax.train.checkpoint import Checkpointer, CheckpointSaveError


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _config(data_dir, **train):
  """small_config with one stage of 6 steps (one train step program to compile)."""
  config = small_config()
  config.data.data_dir = data_dir
  config.stages = config.stages[:1]
  config.stages[0].steps = 6
  for key, value in train.items():
    config.train[key] = value
  return config


def _steps(workdir):
  return sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/[0-9]*"))


# ---- Asynchronous checkpoints.

def test_async_checkpoints_are_the_synchronous_ones(tmp_path, data_dir):
  """Same steps kept, bit-identical states and data positions: training on while a step is
  written changes nothing in it (the state is donated to the next step meanwhile)."""
  runs = {}
  for name, is_async in (("sync", False), ("async", True)):
    workdir = str(tmp_path / name)
    assert trainer.train(_config(data_dir, async_checkpoint=is_async), workdir) == {
        "status": "done", "step": 6}
    runs[name] = workdir
  assert _steps(runs["sync"]) == _steps(runs["async"]) == [2, 4, 6]
  abstract = setup.build(_config(data_dir)).abstract_state
  for step in (2, 4, 6):
    states = []
    for workdir in runs.values():
      checkpointer = Checkpointer(workdir, 3)
      states.append(checkpointer.restore(step, abstract))
      checkpointer.close()
    for a, b in zip(*map(jax.tree_util.tree_leaves, states)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    data = [glob.glob(f"{w}/checkpoints/{step}/data/*.json") for w in runs.values()]
    assert [open(p).read() for p in data[0]] == [open(p).read() for p in data[1]]


@contextlib.contextmanager
def _file_size_limit(limit: int):
  """Writes past `limit` bytes fail with EFBIG in this process, as on a full disk."""
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    yield
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


def test_an_async_write_that_fails_is_one_error_at_the_next_wait(tmp_path, capfd):
  """The background write's failure surfaces when the run next waits (the next save, the
  exit, a preemption stop) as the one-line CheckpointSaveError naming its step; the step
  before it stays restorable."""
  config = small_config()
  loader = pipeline.make_loader([{"frames": np.zeros((2, 4, 4, 3), np.uint8)}] * 4,
                                global_batch_size=2, num_frames=1, resolution=4, seed=0)
  data = iter(loader)
  state = {"w": np.arange(128 * 1024, dtype=np.float32)}  # 512 KiB
  checkpointer = Checkpointer(str(tmp_path), 3, async_save=True)
  checkpointer.save(1, state, data, 0, config)
  checkpointer.wait()
  with _file_size_limit(64 * 1024):
    checkpointer.save(2, state, data, 0, config)  # returns while step 2 is being written
    with pytest.raises(CheckpointSaveError, match=r"could not write checkpoint 2 .*; "
                       "checkpoint 1 is intact"):
      checkpointer.wait()
  checkpointer.wait()  # reported once
  checkpointer.close()
  assert "Traceback" not in capfd.readouterr().err  # Orbax's thread tracebacks are silenced
  checkpointer = Checkpointer(str(tmp_path), 3)
  assert checkpointer.steps_newest_first() == [1]
  np.testing.assert_array_equal(checkpointer.restore_subtree(1, "w", jax.ShapeDtypeStruct(
      state["w"].shape, np.float32)), state["w"])
  checkpointer.close()


# ---- Multi-host preemption: JAX's preemption service.

def test_without_jax_distributed_the_sync_point_is_never_reached():
  flag = loop.PreemptionFlag()
  assert not any(flag.agreed(step, check_now=True) for step in range(1, 5))
  assert flag._sync_service  # pylint: disable=protected-access  (asked, and JAX said no)


def test_without_the_preemption_service_it_is_asked_once(monkeypatch):
  calls = []

  def no_service(step):
    calls.append(step)
    raise RuntimeError("Preemption sync manager has not been initialized. Make sure the "
                       "'jax_enable_preemption_service' config is enabled.")
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", no_service)
  flag = loop.PreemptionFlag()
  assert not any(flag.agreed(step, check_now=True) for step in range(1, 5))
  assert calls == [1]
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                      lambda step: (_ for _ in ()).throw(RuntimeError("coordinator gone")))
  with pytest.raises(RuntimeError, match="coordinator gone"):  # other errors are errors
    loop.PreemptionFlag().agreed(1, check_now=False)


def test_the_preemption_sync_point_stops_the_run_with_a_checkpoint(tmp_path, data_dir,
                                                                   monkeypatch, capsys):
  """Like SIGTERM: the run saves the step JAX names and returns "preempted". JAX's sync
  point is the step after the newest one any host reported, so every step is reported."""
  asked = []

  def sync_point(step):  # Orbax asks it too, at its saves
    asked.append(step)
    return step == 3
  monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", sync_point)
  workdir = str(tmp_path / "run")
  summary = trainer.train(_config(data_dir, checkpoint_every=100, async_checkpoint=True),
                          workdir)
  assert summary == {"status": "preempted", "step": 3}  # not a log step (log_every=2)
  assert sorted(set(asked)) == [1, 2, 3]
  assert _steps(workdir) == [3]
  assert "from JAX's preemption service: saved checkpoint 3" in capsys.readouterr().out
  monkeypatch.undo()
  assert setup.restore_weights(workdir)[2] == 3


# ---- The persistent compilation cache.

def test_compilation_cache_settings(tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  assert compilation_cache.cache_dir("", workdir) == f"{workdir}/compilation_cache"
  assert compilation_cache.cache_dir("none", workdir) is None
  assert compilation_cache.cache_dir("gs://bucket/xla", workdir) == "gs://bucket/xla"
  monkeypatch.chdir(tmp_path)
  assert compilation_cache.cache_dir("cache", workdir) == str(tmp_path / "cache")
  # The test suite's JAX_COMPILATION_CACHE_DIR (conftest.py) wins over the config.
  assert compilation_cache.enable("none", workdir) == os.environ["JAX_COMPILATION_CACHE_DIR"]
  assert not os.path.exists(f"{workdir}/compilation_cache")


@pytest.mark.slow
def test_sigterm_with_async_checkpoints_and_a_restart_from_the_compilation_cache(tmp_path,
                                                                                data_dir):
  """One CLI run with async checkpoints, SIGTERMed: its stop step is on disk and restores.
  Without JAX_COMPILATION_CACHE_DIR it caches its programs in <workdir>/compilation_cache,
  and the restarted run in the same workdir loads its train step from there."""
  workdir = str(tmp_path / "run")
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  command = _train_command(workdir, data_dir, steps=(200, 200)) + [
      "--config.train.async_checkpoint=true"]
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  try:
    assert _wait_for(lambda: _has_checkpoint(workdir, 4), proc), "run never reached step 4"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  assert f"XLA compilation cache: {workdir}/compilation_cache (0 entries)." in out
  summary = json.loads(out.strip().splitlines()[-1])
  stop = summary["step"]
  assert summary["status"] == "preempted" and _has_checkpoint(workdir, stop)
  assert os.listdir(f"{workdir}/compilation_cache")

  # Two more steps of the same shapes, from the stop step.
  resumed = subprocess.run(
      _train_command(workdir, data_dir, steps=(stop + 2, 1)) + [
          "--config.stages[1].num_frames=3"],
      env=dict(env, JAX_DEBUG_LOG_MODULES="jax._src.compiler"), timeout=600,
      capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming from checkpoint step {stop} (stage 0)." in resumed.stdout
  assert "entries)." in resumed.stdout and "(0 entries)" not in resumed.stdout
  assert "Persistent compilation cache hit for 'jit_train_step'" in resumed.stderr, (
      resumed.stderr[-3000:])


# ---- Samples in TensorBoard.

def _image_summaries(logdir):
  """(step, tag, image) of every image summary in the run's event files (the TFRecord
  framing: length, its CRC, the Event proto, its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  found = []
  for path in glob.glob(f"{logdir}/events.out.tfevents.*"):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      found += [(event.step, v.tag, v.image) for v in event.summary.value
                if v.HasField("image")]
  return found


def test_samples_of_the_ema_weights_go_to_tensorboard(tmp_path, data_dir, capsys):
  config = _config(data_dir, sample_every=4, sample_clips=2, sample_steps=2)
  workdir = str(tmp_path / "run")
  calls = []
  sample_fn = train_samples.make_sample_fn(config, workdir)

  def recording_sample_fn(params, step):
    calls.append(step)
    video = sample_fn(params, step)
    assert video.dtype == np.uint8 and video.shape == (2, 3, 16, 16, 3)
    # The given first frames are the held-out clips' own (the patch tokenizer is exact).
    first = train_samples.first_frames(config, workdir, 2, 16)
    np.testing.assert_array_equal(video[:, :1], first)
    return video
  assert trainer.train(config, workdir, sample_fn=recording_sample_fn)["step"] == 6
  assert calls == [4, 6]  # every sample_every steps and at the last
  assert "Wrote samples of step 6 to TensorBoard." in capsys.readouterr().out
  images = _image_summaries(f"{workdir}/tensorboard")
  assert sorted((step, tag) for step, tag, _ in images) == [
      (4, "samples/frames"), (4, "samples/video"), (6, "samples/frames"),
      (6, "samples/video")]
  for _, tag, image in images:
    if tag == "samples/video":  # an animated GIF: 2 clips side by side, 8x upscaled
      assert image.encoded_image_string[:6] == b"GIF89a"
      assert (image.height, image.width) == (128, 2 * 128 + 2)
    else:  # a PNG contact sheet: 2 rows of 3 frames
      assert image.encoded_image_string[:4] == b"\x89PNG"
      assert (image.height, image.width) == (2 * 128 + 2, 3 * 128 + 2 * 2)
