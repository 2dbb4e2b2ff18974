"""The ablation driver (eval/ablation.py): what it trains and evaluates, in which order, the
table it writes, and that a rerun continues rather than repeats."""

import json
import os
import sys

import pytest

from configs import videomar as videomar_config
from videomar_jax.eval import ablation
from videomar_jax.losses import next_frame


def _flag(argv, name):
  prefix = f"--{name}="
  return next(a[len(prefix):] for a in argv if a.startswith(prefix))


class FakeCLI:
  """Stands in for `videomar`: records the commands; `evaluate` writes a metrics.json whose
  error encodes the temperature flag, so the table can be checked row by row."""

  def __init__(self):
    self.calls = []

  def __call__(self, argv, log_path):
    command = argv[len(ablation.VIDEOMAR)]
    self.calls.append((command, argv))
    if command == "evaluate":
      workdir, report = _flag(argv, "workdir"), _flag(argv, "report_name")
      temperature = _flag(argv, "temperature")
      error = {"1.0": 3.0, "linear": 2.0}.get(temperature, 2.5)
      os.makedirs(os.path.join(workdir, report))
      metrics = {"centre_error_px": error, "per_seed": {"0": {"centre_error_px": error - 0.1},
                                                        "1": {"centre_error_px": error + 0.1}},
                 "centre_error_vs_copy_first": 5.43 / error,
                 "teacher_forced_centre_error_px": 1.5, "balls_found_fraction": 0.95,
                 "ssim": 0.6, "centre_error_px_per_frame": [error] * 7,
                 "baseline_centre_error_px": 5.43, "copy_previous_centre_error_px": 1.79,
                 "num_examples": int(_flag(argv, "num_examples")), "seeds": [0, 1],
                 "checkpoint_step": 10}
      with open(os.path.join(workdir, report, "metrics.json"), "w") as f:
        json.dump(metrics, f)
    return 1.0


def test_each_model_is_trained_once_before_its_evaluations_and_the_table_is_written(tmp_path):
  root = str(tmp_path / "ablation")
  cli = FakeCLI()
  result = ablation.run(root, ["--config.stages[0].steps=7"], jobs=2, num_examples=16,
                        runner=cli)
  commands = [c for c, _ in cli.calls]
  assert commands.count("data") == 1 and commands.count("train") == 3
  assert commands.count("evaluate") == 6  # row 3 and the temperature table's first share one
  trained = {}
  for i, (command, argv) in enumerate(cli.calls):
    if command == "train":
      trained[_flag(argv, "workdir")] = i
      assert "--config.stages[0].steps=7" in argv
    if command == "evaluate":  # its model's training finished earlier
      assert trained[_flag(argv, "workdir")] < i
      temperatures = _flag(argv, "temperature").split(",")
      assert len(temperatures) in (1, 7)  # one value, or one per generated frame of 8
  modes = {(_flag(a, "config.loss.mode"), _flag(a, "config.model.temporal_attention"))
           for c, a in cli.calls if c == "train"}
  assert modes == {("mar", "bidirectional"), ("paper", "bidirectional"), ("paper", "causal")}
  rows = result["rows"]
  assert [r["paper_vbench_i2v"] for r in rows] == [78.81, 79.76, 80.72, 82.56, 82.19, 83.13,
                                                   83.56]
  assert rows[3]["centre_error_px"] == 2.0 and rows[2]["centre_error_px"] == 3.0
  assert rows[0]["centre_error_px_per_seed"] == [2.9, 3.1]
  with open(os.path.join(root, ablation.TABLE_FILE)) as f:
    text = f.read()
  assert "78.81" in text and "3.00 (2.90 / 3.10)" in text and "16 held-out clips" in text
  with open(os.path.join(root, ablation.NUMBERS_FILE)) as f:
    assert json.load(f)["rows"] == rows

  # A second invocation finds every model trained and every report written: no work.
  again = FakeCLI()
  ablation.run(root, [], runner=again)
  assert [c for c, _ in again.calls] == ["data"]


def test_an_interrupted_ablation_evaluates_only_what_is_missing(tmp_path):
  root = str(tmp_path)
  ablation.run(root, [], runner=FakeCLI())
  os.remove(os.path.join(root, "next_frame_causal", "report_linear", "metrics.json"))
  os.rmdir(os.path.join(root, "next_frame_causal", "report_linear"))
  again = FakeCLI()
  ablation.run(root, [], runner=again)
  assert [(c, _flag(a, "report_name")) for c, a in again.calls if c != "data"] == [
      ("evaluate", "report_linear")]


def test_every_training_is_a_valid_config_of_the_recipe():
  """The overrides name keys the `tiny` preset has, and each (loss, attention) pair is one
  the loss accepts (all_frames needs causal attention, so the middle row uses `paper`)."""
  for training in ablation.TRAININGS:
    config = videomar_config.get_config("tiny")
    for flag in training.overrides():
      key, value = flag[len("--config."):].split("=")
      section, name = key.split(".")
      assert name in config[section], flag
      config[section][name] = value
    next_frame.check_modes(config.loss.mode, config.model.temporal_attention)


def test_temperature_ramps_match_the_papers_end_values():
  assert ablation.temperature_flag("1.0", 7) == "1.0"
  assert ablation.temperature_flag("linear", 7) == "linear"
  ramp = [float(v) for v in ablation.temperature_flag("1.0->0.96", 7).split(",")]
  assert ramp[0] == 1.0 and ramp[-1] == 0.96 and len(ramp) == 7
  assert all(a > b for a, b in zip(ramp, ramp[1:]))


def test_a_failed_command_names_its_log(tmp_path):
  log = str(tmp_path / "train.log")
  with pytest.raises(RuntimeError, match="exit 3.*train.log"):
    ablation._run_logged([*ablation.VIDEOMAR[:1], "-c", "import sys; sys.exit(3)", "train"],
                         log)
  assert os.path.exists(log)
  assert sys.executable == ablation.VIDEOMAR[0]
