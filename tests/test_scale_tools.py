"""`videomar plan` (compile-only capacity planning) and `videomar bench train` (MFU)."""

import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, small_config
from videomar_jax.tools import plan as plan_lib
from videomar_jax.tools.bench_train import bench_train


def test_plan_compiles_from_abstract_shapes_and_fsdp_shrinks_the_per_device_state():
  config = small_config()
  config.stages[-1].batch_size = 8
  replicated = plan_lib.plan(config, {"data": 8, "fsdp": 1, "tensor": 1})
  sharded = plan_lib.plan(config, {"data": 2, "fsdp": 4, "tensor": 1})
  for result in (replicated, sharded):
    for key in ("arguments", "outputs", "temporaries", "peak_estimate"):
      assert result["per_device_bytes"][key] > 0, key
    assert result["model_flops_per_step"] > 0
  # Pure data parallelism holds the whole state on every device; fsdp=4 a quarter of it
  # (plus replicated small tensors and the batch shard).
  assert replicated["per_device_bytes"]["arguments"] >= replicated["state_bytes_total"]
  assert sharded["per_device_bytes"]["arguments"] < 0.5 * replicated["per_device_bytes"][
      "arguments"]
  config.stages[-1].batch_size = 4
  with pytest.raises(ValueError, match="batch size 4 is not divisible by data x fsdp = 8"):
    plan_lib.plan(config, {"data": 8, "fsdp": 1, "tensor": 1})


def test_plan_command_line_on_fake_devices(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, "-m", "videomar_jax.cli.main", "plan",
       f"--config={REPO}/configs/videomar.py:small", "--mesh=data:2,fsdp:8,tensor:1",
       f"--json={tmp_path}/plan.json"], capture_output=True, text=True, env=env, cwd=REPO,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "(16 devices)" in result.stdout and "temporaries" in result.stdout
  with open(tmp_path / "plan.json") as f:
    assert json.load(f)["mesh"] == {"data": 2, "fsdp": 8, "tensor": 1}


def test_bench_train_reports_every_key(tmp_path):
  config = small_config()
  result = bench_train(config, steps=2, peak_matmul_size=256,
                       profile_dir=str(tmp_path / "trace"))
  # The timed steps' trace, for TensorBoard's profile plugin / xprof.
  assert glob.glob(str(tmp_path / "trace" / "**" / "*.xplane.pb"), recursive=True)
  for key in ("step_s", "tokens_per_s", "model_flops_per_step", "achieved_flops",
              "peak_flops", "mfu"):
    assert result[key] > 0, key
  assert result["achieved_flops"] == pytest.approx(result["model_flops_per_step"] /
                                                   result["step_s"])
  assert result["mfu"] == pytest.approx(result["achieved_flops"] / result["peak_flops"])
  assert result["tokens_per_s"] == pytest.approx(
      result["batch_size"] * result["sequence_length"] / result["step_s"])
