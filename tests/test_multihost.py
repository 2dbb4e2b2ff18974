"""Multi-process training over loopback: 2 processes x 4 fake CPU devices against 1 x 8.

Each process is a real `videomar train` with `--distributed=manual`, talking to process 0
over 127.0.0.1 (gloo collectives on CPU). The global batches do not depend on the number of
processes (`data.pipeline.GlobalBatchRows`), so the losses must agree; the run's Orbax
checkpoint, written by both processes, must resume in a single process.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from videomar_jax.train.loss_report import read_metrics

pytestmark = pytest.mark.slow
TIMEOUT_S = 420


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(workdir, data_dir, steps, *extra):
  return [sys.executable, "-m", "videomar_jax.cli.main", "train",
          f"--config={REPO}/configs/videomar.py:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.data.num_train_clips=32",
          "--config.data.num_test_clips=4", "--config.data.num_frames=4",
          "--config.data.resolution=16", "--config.batch_size=8",
          "--config.model.width=32", "--config.model.depth=2", "--config.model.num_heads=2",
          "--config.head.width=32",
          "--config.mesh.data=4", "--config.mesh.fsdp=2",
          f"--config.stages[0].steps={steps}", "--config.stages[0].num_frames=3",
          "--config.stages[0].resolution=16", "--config.stages[1].steps=2",
          "--config.stages[1].num_frames=4", "--config.stages[1].resolution=16",
          "--config.train.checkpoint_every=2", "--config.train.log_every=1", *extra]


def _env(num_devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=" ".join(filter(None, [
                  os.environ.get("XLA_FLAGS", ""),  # conftest's compiler settings
                  f"--xla_force_host_platform_device_count={num_devices}"])))


def _run_processes(commands, env):
  procs = [subprocess.Popen(c, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for c in commands]
  try:
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:  # never leave a process behind, whatever happened
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  return outputs


def _losses(workdir):
  return [m["loss"] for _, m in sorted(read_metrics(workdir).items())]


def test_two_processes_match_one_and_their_checkpoint_resumes_in_one(tmp_path):
  data_dir = str(tmp_path / "data")
  # The reference: one process, 8 devices, uninterrupted through both stages (4 + 4
  # steps; the schedule is constant after warmup, so the first 6 steps are those of a
  # 4 + 2 run).
  extended = ["--config.stages[1].steps=4"]
  single = str(tmp_path / "single")
  _run_processes([_command(single, data_dir, 4, *extended)], _env(8))

  multi = str(tmp_path / "multi")
  port = _free_port()
  outputs = _run_processes(
      [_command(multi, data_dir, 4, "--distributed=manual",
                f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                f"--process_id={i}") for i in range(2)], _env(4))
  assert "in 2 process(es)" in outputs[0]
  assert len(_losses(multi)) == 6
  np.testing.assert_allclose(_losses(multi), _losses(single)[:6], rtol=2e-5)

  # The 2-process checkpoints (last: step 6) resume in one process with 8 devices: two
  # more steps of stage 1, with the same losses as the uninterrupted one-process run.
  _run_processes([_command(multi, data_dir, 4, *extended)], _env(8))
  assert len(_losses(multi)) == 8
  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=2e-5)


def test_sigterm_to_one_process_stops_all_of_them_at_one_saved_step(tmp_path):
  """Preemption notices reach hosts at different times; saving is collective, so the
  processes agree on the step to stop at, save it together and all exit 0."""
  import glob  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  workdir, port = str(tmp_path / "run"), _free_port()
  commands = [_command(workdir, str(tmp_path / "data"), 200, "--distributed=manual",
                       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                       f"--process_id={i}", "--config.train.checkpoint_every=1000")
              for i in range(2)]
  procs = [subprocess.Popen(c, env=_env(4), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for c in commands]
  try:
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and not (os.path.exists(f"{workdir}/metrics.jsonl") and
                                          len(read_metrics(workdir)) >= 3):
      assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
      time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  # JAX's preemption notifier heard the SIGTERM (the trainer leaves it the signal) and its
  # service spread it to the other process: both stop at the sync point's step.
  assert "from JAX's preemption service: saved checkpoint" in outputs[0], outputs[0][-3000:]
  saved = [int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/[0-9]*")]
  assert len(saved) == 1 and saved[0] < 200 and saved[0] == max(read_metrics(workdir))
