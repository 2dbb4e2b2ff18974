"""`videomar plan --topology`: the train step compiled by libtpu for a TPU slice, no TPU.

The compiling tests need libtpu, the `tpu` extra (`pip install -e .[tpu]`), which
launch/_env.sh installs with the test extras; the others run without it.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, small_config
from videomar_jax.errors import ConfigError, UserError
from videomar_jax.tools import plan as plan_lib
from videomar_jax.tools import tpu_topology

GIB = 2**30


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "videomar_jax.cli.main", "plan", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _one_error_line(result) -> str:
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("ERROR: ")]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


def test_topology_names_give_chips_and_hbm():
  v5p = tpu_topology.parse_topology("v5p:4x4x4")
  assert (v5p.num_chips, v5p.chip.hbm_bytes, v5p.chip.chip_config) == (64, 95 * GIB,
                                                                        "megacore")
  lite = tpu_topology.parse_topology("v5litepod:2x4")  # Cloud's name of a v5e slice
  assert (lite.chip.generation, lite.num_chips, lite.chip.hbm_bytes) == ("v5e", 8, 16 * GIB)
  assert tpu_topology.parse_topology("V4:2x2x1").chip.hbm_bytes == 32 * GIB
  assert tpu_topology.parse_topology("v6e:16x16").num_chips == 256


@pytest.mark.parametrize("text, expected", [
    ("v9:2x2", "unknown TPU topology 'v9:2x2'; use CHIP:AxB (v5e, v5litepod, v6e)"),
    ("v5p-128", "unknown TPU topology 'v5p-128'"),
    ("v5p:4x4", "TPU topology 'v5p:4x4': v5p slices are AxBxC with sizes >= 1 (3 axes)"),
    ("v5e:2x2x1", "v5e slices are AxB"),
    ("v4:0x2x2", "v4 slices are AxBxC with sizes >= 1"),
])
def test_a_bad_topology_is_one_line(text, expected):
  with pytest.raises(ConfigError) as error:
    tpu_topology.parse_topology(text)
  assert expected in str(error.value)
  assert expected in _one_error_line(_cli("--config=tiny", f"--topology={text}"))


def test_a_mesh_the_slice_cannot_take_is_one_line_before_any_compiling():
  line = _one_error_line(_cli("--config=tiny", "--topology=v5e:2x2", "--mesh=data:3"))
  assert ("v5e:2x2 has 4 chips: mesh {'data': 3, 'fsdp': 1, 'tensor': 1} has 3 devices, "
          "but 4 are available.") in line
  line = _one_error_line(_cli("--config=tiny", "--topology=v5p:4x4x4", "--mesh=fsdp:-1,data:3"))
  assert "v5p:4x4x4 has 64 chips: mesh" in line and "not divisible" in line


def test_without_libtpu_the_error_names_the_install_command(monkeypatch):
  real = tpu_topology.importlib.util.find_spec
  monkeypatch.setattr(tpu_topology.importlib.util, "find_spec",
                      lambda name, *a: None if name == "libtpu" else real(name, *a))
  with pytest.raises(UserError, match=r"libtpu, which is not installed: pip install -e "
                                      r"\.\[tpu\]"):
    tpu_topology.topology_devices(tpu_topology.parse_topology("v5e:2x2"))


@pytest.mark.parametrize("topology, device_kind", [("v5e:2x2", "TPU v5 lite"),
                                                   ("v4:2x2x1", "TPU v4")])
def test_a_small_config_compiles_for_a_small_slice_and_fits(topology, device_kind):
  config = small_config()
  config.mesh.data, config.mesh.fsdp = 1, -1  # the state sharded over the 4 chips
  config.stages[-1].batch_size = 4  # one example a chip
  result = plan_lib.plan_for_topology(config, tpu_topology.parse_topology(topology))
  assert result["device_kind"] == device_kind
  assert result["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  memory = result["per_device_bytes"]
  for key in ("arguments", "outputs", "temporaries", "peak_estimate"):
    assert memory[key] > 0, key
  assert result["compiler_error"] is None and result["fits"] is True
  assert memory["peak_estimate"] < result["hbm_bytes_per_chip"] == (
      tpu_topology.parse_topology(topology).chip.hbm_bytes)
  assert result["compiled_flops_per_device"] > 0 and result["compile_seconds"] > 0


@pytest.mark.slow
def test_plan_command_line_for_a_topology_next_to_the_cpu_estimate(tmp_path):
  result = _cli("--config=tiny", "--topology=v5e:2x2", "--cpu_estimate",
                f"--json={tmp_path}/plan.json")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "(4 chips, TPU v5 lite)" in result.stdout
  assert "v5e:2x2: peak" in result.stdout and "; 16.00 GiB HBM per chip -> fits" in result.stdout
  assert "CPU estimate" in result.stdout
  with open(tmp_path / "plan.json") as f:
    saved = json.load(f)
  assert saved["topology"] == "v5e:2x2" and saved["fits"] is True
  assert saved["cpu_estimate"]["mesh"] == saved["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  assert saved["cpu_estimate"]["device_kind"] == "cpu"


def test_a_step_the_compiler_refuses_is_reported_as_not_fitting():
  """What plan_for_topology returns when libtpu refuses the program (measured: tiny at
  batch 65536 on v5e:2x2, 12 minutes to refuse, too slow to compile here)."""
  refused = {
      "mesh": {"data": 4, "fsdp": 1, "tensor": 1}, "num_devices": 4,
      "device_kind": "TPU v5 lite", "dtype": "float32", "parameters": 1089888,
      "state_bytes_total": 17438208, "per_device_bytes": None,
      "stage": {"num_frames": 4, "resolution": 32, "batch_size": 65536, "latent_frames": 4,
                "tokens_per_frame": 64, "sequence_length": 384},
      "compiler_error": "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
                        "required for HLO temporaries (290.18G) exceeds available HBM "
                        "(15.75G).",
      "topology": "v5e:2x2", "hbm_bytes_per_chip": 16 * GIB, "fits": False,
      "compile_seconds": 701.0}
  text = plan_lib.format_plan(refused)
  assert "the compiler: RESOURCE_EXHAUSTED: Ran out of memory on HBM" in text
  assert text.splitlines()[-1] == ("v5e:2x2: the compiler refused the step; 16.00 GiB HBM "
                                   "per chip -> DOES NOT FIT")


def test_a_mesh_the_slice_cannot_lay_out_is_one_line():
  """v5p:4x8x8 has 256 chips, but no product of its axes (4, 8, 8) is 16: data 16 x fsdp
  16 cannot be placed on it (on the real slice no more than here)."""
  line = _one_error_line(_cli("--config=paper", "--topology=v5p:4x8x8",
                              "--mesh=data:16,fsdp:16"))
  assert ("mesh {'data': 16, 'fsdp': 16, 'tensor': 1} does not map onto the slice's physical "
          "axes: Failed to find assignment for logical_axis_index 1 of size 16") in line
