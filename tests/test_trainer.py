"""Trainer: optimiser rules, train step, curriculum, checkpoints, NaN guard, SIGTERM/SIGKILL."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, small_config
from videomar_jax.tokenizers import make_tokenizer
from videomar_jax.train import optimizer as optim_lib
from videomar_jax.errors import ConfigError
from videomar_jax.io import safetensors_io
from videomar_jax.train import loop, trainer
from videomar_jax.train.loss_report import read_metrics
from videomar_jax.train.setup import make_model
from videomar_jax.train.state import create_state, make_train_step
from videomar_jax.losses import next_frame


def _settings(model):
  return next_frame.LossSettings.from_config(model.config)



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("data"))


def _config(data_dir, **train):
  config = small_config()
  config.data.data_dir = data_dir
  for key, value in train.items():
    config.train[key] = value
  return config


def test_weight_decay_only_on_weight_matrices():
  model = make_model(small_config())
  mask = optim_lib.decay_mask(model.init(jax.random.key(0)))
  blocks = mask["transformer"]["blocks"]
  assert blocks["attn1"]["wqkv"]["kernel"] and blocks["ff_proj"]["kernel"]
  assert mask["transformer"]["z_proj"]["kernel"] and not mask["transformer"]["z_proj"]["bias"]
  assert not blocks["scale_shift_table"] and not blocks["norm1"]["scale"]
  assert not blocks["attn1"]["q_norm"]["scale"] and not mask["transformer"]["mask_token"]
  head = mask["diffusion_head"]
  assert head["input_proj"]["kernel"] and not head["input_proj"]["bias"]
  assert not head["res_blocks_0"]["in_ln"]["scale"]


def test_learning_rate_schedule():
  config = small_config()
  config.optim.lr, config.optim.base_lr, config.optim.warmup_steps = 0.0, 1e-4, 10
  assert optim_lib.learning_rate(config.optim, 512) == pytest.approx(2e-4)
  config.optim.schedule = "cosine"
  sched = optim_lib.lr_schedule(config.optim, 512, 110)
  assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(1e-4)
  assert float(sched(10)) == pytest.approx(2e-4) and float(sched(110)) == pytest.approx(0.0)
  config.optim.schedule = "linear"
  with pytest.raises(ValueError, match="schedule"):
    optim_lib.lr_schedule(config.optim, 512, 110)


def test_train_step_updates_params_ema_and_step():
  config = small_config()
  config.optim.warmup_steps = 0  # the warmup's first step has lr 0
  model, tokenizer = make_model(config), make_tokenizer(config.tokenizer)
  optimizer = optim_lib.make_optimizer(config.optim, 4, 10)
  state = create_state(model, optimizer, seed=0)
  step = jax.jit(make_train_step(model, tokenizer, optimizer, 0.9,
                         _settings(model)))
  video = jax.random.randint(jax.random.key(0), (4, 3, 16, 16, 3), 0, 256).astype(jnp.uint8)
  new, metrics = step(state, {"video": video})
  assert int(new.step) == 1 and np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  # EMA warmup: the first step's decay is min(0.9, (1 + 0) / (10 + 0)) = 0.1.
  jax.tree_util.tree_map(
      lambda e, e0, p: np.testing.assert_allclose(e, 0.1 * e0 + 0.9 * p, rtol=1e-6, atol=1e-7),
      new.ema_params, state.ema_params, new.params)
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(state.params)))
  # Same state and batch -> same loss: all randomness comes from fold_in(rng, step).
  again, metrics2 = step(state, {"video": video})
  assert float(metrics["loss"]) == float(metrics2["loss"])


def test_curriculum_checkpoints_logs_profile_and_resume(tmp_path, data_dir, capsys):
  workdir = str(tmp_path / "run")
  config = _config(data_dir, profile_steps=(1, 3))
  summary = trainer.train(config, workdir)
  assert summary == {"status": "done", "step": 8}
  metrics = read_metrics(workdir)
  assert sorted(metrics) == list(range(1, 9))
  assert all(np.isfinite(m["loss"]) for m in metrics.values())
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/[0-9]*"))
  assert steps == [4, 6, 8]  # keep_checkpoints=3
  assert glob.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
  with open(f"{workdir}/train_summary.json") as f:
    assert json.load(f)["steps"] == 8
  assert os.path.getsize(f"{workdir}/loss_curve.png") > 1000
  # profile_steps=(1, 3): one jax.profiler trace of steps 2..3, holding the train step's work.
  traces = glob.glob(f"{workdir}/profile/plugins/profile/*/*.xplane.pb")
  assert len(traces) == 1, traces
  with open(traces[0], "rb") as f:
    assert b"jit(train_step)" in f.read()
  assert f"Profiler trace of steps 2..3 written to {traces[0]}" in capsys.readouterr().out
  # A longer curriculum on the same workdir resumes at step 8 inside the extended stage 1
  # (past the profiled window: no second trace).
  config.stages[1].steps = 6
  summary = trainer.train(config, workdir)
  assert summary["step"] == 10 and sorted(read_metrics(workdir)) == list(range(1, 11))
  assert glob.glob(f"{workdir}/profile/plugins/profile/*/*.xplane.pb") == traces


@pytest.mark.parametrize("window, expected", [
    ((3, 3), "got 3,3"), ((5, 2), "got 5,2"), ((-1, 2), "got -1,2"), ((1, 2, 3), "got (1, 2, 3)"),
    (("a", "b"), "got ('a', 'b')"), ((8, 10), "starts after the run's last step (8)"),
])
def test_a_bad_profile_window_is_a_config_error(window, expected):
  config = small_config()
  config.train.profile_steps = window
  with pytest.raises(ConfigError, match="config.train.profile_steps") as info:
    trainer.validate(config)
  assert expected in str(info.value) and "\n" not in str(info.value)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  config = _config(data_dir, checkpoint_every=1)
  config.optim.lr, config.optim.warmup_steps, config.optim.grad_clip = 1e30, 0, 1e30
  with pytest.raises(trainer.NonFiniteLossError, match="non-finite") as info:
    trainer.train(config, workdir)
  steps = sorted(int(os.path.basename(p)) for p in glob.glob(f"{workdir}/checkpoints/[0-9]*"))
  assert steps, "the step before the blow-up should have been saved"
  assert f"step {steps[-1]}" in str(info.value)
  # The kept checkpoint restores and holds finite parameters.
  model = make_model(config)
  optimizer = optim_lib.make_optimizer(config.optim, config.batch_size, 8)
  from videomar_jax.train.checkpoint import Checkpointer
  ckpt = Checkpointer(workdir, 3)
  abstract = jax.eval_shape(lambda: create_state(model, optimizer, 0))
  state = ckpt.restore(steps[-1], abstract)
  ckpt.close()
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(state.params))


def test_bad_stage_is_a_clear_error(tmp_path, data_dir):
  config = _config(data_dir)
  config.stages[0].resolution = 10
  with pytest.raises(ValueError, match="not divisible"):
    trainer.train(config, str(tmp_path / "run"))
  config = _config(data_dir)
  config.stages[0].num_frames = 99
  with pytest.raises(ValueError, match="num_frames"):
    trainer.train(config, str(tmp_path / "run"))


# ---- Process-level tests through the CLI.

def _train_command(workdir, data_dir, steps=(12, 12)):
  return [sys.executable, "-m", "videomar_jax.cli.main", "train",
          f"--config={REPO}/configs/videomar.py:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", "--config.data.num_train_clips=24",
          "--config.data.num_test_clips=4", "--config.data.num_frames=6",
          "--config.data.resolution=16", "--config.batch_size=4",
          "--config.model.width=32", "--config.model.depth=2", "--config.model.num_heads=2",
          "--config.head.width=32", "--config.head.depth=1",
          f"--config.stages[0].steps={steps[0]}", "--config.stages[0].num_frames=3",
          "--config.stages[0].resolution=16", f"--config.stages[1].steps={steps[1]}",
          "--config.stages[1].num_frames=4", "--config.stages[1].resolution=16",
          "--config.train.checkpoint_every=2", "--config.train.log_every=2"]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def _wait_for(predicate, proc, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.02)
  return False


def _has_checkpoint(workdir, step):
  return os.path.isdir(os.path.join(workdir, "checkpoints", str(step)))


def test_resuming_with_another_model_is_one_line_and_keeps_the_runs_config(tmp_path, data_dir):
  workdir = str(tmp_path / "run")
  subprocess.run(_train_command(workdir, data_dir, steps=(2, 1)), check=True, env=_env(),
                 timeout=600, capture_output=True)
  with open(os.path.join(workdir, "config.json")) as f:
    before = f.read()
  result = subprocess.run(_train_command(workdir, data_dir, steps=(2, 2)) +
                          ["--config.model.width=64", "--config.head.depth=2"],
                          env=_env(), timeout=600, capture_output=True, text=True)
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr, result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith("ERROR: ")]
  assert len(errors) == 1, result.stderr
  assert "checkpoint step 3 of another model" in errors[0]
  assert "head.depth: 1 -> 2; model.width: 32 -> 64" in errors[0]
  assert "new --workdir" in errors[0]
  with open(os.path.join(workdir, "config.json")) as f:
    assert f.read() == before  # the run's own config is not overwritten by the failed one


@pytest.mark.slow
def test_sigkill_and_restart_reproduces_the_uninterrupted_losses(tmp_path, data_dir):
  reference = str(tmp_path / "reference")
  subprocess.run(_train_command(reference, data_dir), check=True, env=_env(), timeout=600,
                 capture_output=True)
  expected = read_metrics(reference)
  assert sorted(expected) == list(range(1, 25))

  workdir = str(tmp_path / "killed")
  proc = subprocess.Popen(_train_command(workdir, data_dir), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    # Kill inside stage 1 (steps 13..24), right after checkpoint 16 is complete.
    assert _wait_for(lambda: _has_checkpoint(workdir, 16), proc), "run never reached step 16"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert not _has_checkpoint(workdir, 24), "the run finished before it could be killed"
  resumed = subprocess.run(_train_command(workdir, data_dir), env=_env(), timeout=600,
                           capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resuming from checkpoint step" in resumed.stdout
  got = read_metrics(workdir)
  assert sorted(got) == list(range(1, 25))
  with open(os.path.join(workdir, "metrics.jsonl")) as f:  # one row per step, no repeats
    assert [json.loads(line)["step"] for line in f] == list(range(1, 25))
  for step in range(1, 25):
    assert got[step]["loss"] == expected[step]["loss"], step  # bit-exact, step for step


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_saves_at_the_next_step_and_exits_cleanly(tmp_path, data_dir,
                                                                    signum):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(_train_command(workdir, data_dir, steps=(200, 200)), env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert _wait_for(lambda: _has_checkpoint(workdir, 4), proc), "run never reached step 4"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  assert f"{signal.Signals(signum).name} received" in out
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["status"] == "preempted" and 4 <= summary["step"] < 400
  assert _has_checkpoint(workdir, summary["step"])


def test_a_second_training_on_a_busy_workdir_refuses_at_once(tmp_path, data_dir):
  """One line naming the holder while the first runs; after the first is SIGKILLed the
  workdir is free again (the kernel drops the lock), and the next run resumes."""
  workdir = str(tmp_path / "run")
  first = subprocess.Popen(_train_command(workdir, data_dir, steps=(400, 400)), env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert _wait_for(lambda: _has_checkpoint(workdir, 2), first), "run never reached step 2"
    second = subprocess.run(_train_command(workdir, data_dir), env=_env(), timeout=300,
                            capture_output=True, text=True)
    assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr
    assert f"is in use by another training (pid {first.pid} on" in second.stderr
  finally:
    first.kill()
    first.communicate()
  third = subprocess.run(_train_command(workdir, data_dir, steps=(2, 1)), env=_env(),
                         timeout=300, capture_output=True, text=True)
  assert third.returncode == 0, third.stderr[-3000:]
  assert "Resuming from checkpoint" in third.stdout


def test_a_second_ctrl_c_stops_at_once():
  """The first SIGINT asks for a save at the next step; a second one (the user insists)
  raises KeyboardInterrupt, which the CLI reports as one line, exit 130. Signals sent
  back to back to another process can merge into one, so this runs in-process."""
  before = signal.getsignal(signal.SIGINT)  # default, or ignored in a pytest-xdist worker
  with loop.PreemptionFlag() as flag:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
    assert flag.raised and flag.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(1.0)
  assert signal.getsignal(signal.SIGINT) is before  # restored


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", *args],
                        capture_output=True, text=True, env=_env(), timeout=300)


def test_cli_rejects_unknown_config_keys_and_missing_files(tmp_path):
  result = _cli("info", f"--config={REPO}/configs/videomar.py:tiny", "--config.model.widht=3")
  assert result.returncode != 0 and "widht" in result.stderr
  result = _cli("info", f"--config={tmp_path}/nope.py")
  assert result.returncode != 0 and "nope.py" in result.stderr
  result = _cli("info", f"--config={REPO}/configs/videomar.py:huge")
  assert result.returncode != 0 and "huge" in result.stderr
  result = _cli("frobnicate")
  assert result.returncode == 2 and "unknown command" in result.stderr


def test_cli_info_and_data_build(tmp_path):
  result = _cli("info", f"--config={REPO}/configs/videomar.py:paper")
  assert result.returncode == 0, result.stderr
  assert "total" in result.stdout and "1.38" in result.stdout
  assert "tokens per frame: 1024" in result.stdout and "FLOPs per example" in result.stdout
  result = _cli("data", "build", "--dataset=bouncing_balls", f"--data_dir={tmp_path}",
                "--num_train_clips=4", "--num_test_clips=2", "--num_frames=4",
                "--resolution=16")
  assert result.returncode == 0, result.stderr
  assert glob.glob(f"{tmp_path}/**/*.array_record*", recursive=True)


def test_a_fresh_run_can_start_from_pytorch_weights(tmp_path, data_dir):
  from videomar_jax import interop  # pylint: disable=import-outside-toplevel
  from videomar_jax.train.setup import restore_weights  # pylint: disable=import-outside-toplevel
  config = _config(data_dir, checkpoint_every=1)
  config.stages[0].steps, config.stages[1].steps = 1, 1
  config.optim.lr = 1e-30  # the steps run, but leave the weights where they started
  model = make_model(config)
  weights = jax.tree_util.tree_map(lambda p: p + 0.5, model.init(jax.random.key(7)))
  interop.export_params(weights, config, str(tmp_path / "authors.safetensors"))
  # Saved under slightly different names, loaded through a key map.
  renamed = {k.replace("decoder_blocks.", "layers."): v for k, v in
             safetensors_io.load(str(tmp_path / "authors.safetensors")).items()}
  safetensors_io.save(renamed, str(tmp_path / "authors.safetensors"))
  (tmp_path / "map.json").write_text('{"^layers\\\\.": "decoder_blocks."}')
  config.train.init_key_map = str(tmp_path / "map.json")
  config.train.init_from = str(tmp_path / "authors.safetensors")
  # Checkpoints outside the workdir (as gs://... on a pod): found through config.json.
  config.train.checkpoint_dir = str(tmp_path / "elsewhere" / "ckpt")
  trainer.train(config, str(tmp_path / "run"), interop.init_params_loader(config))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")
  assert os.path.isdir(tmp_path / "elsewhere" / "ckpt" / "2")
  for use_ema in (False, True):
    _, params, step = restore_weights(str(tmp_path / "run"), use_ema=use_ema)
    assert step == 2
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(weights)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)

  config.train.init_from = str(tmp_path / "missing.safetensors")
  config.train.checkpoint_dir = ""
  with pytest.raises(FileNotFoundError, match="missing.safetensors"):
    trainer.train(config, str(tmp_path / "run2"), interop.init_params_loader(config))
  with pytest.raises(ConfigError, match="no loader was given"):
    trainer.train(config, str(tmp_path / "run2"))
