"""launch/tpu_pod.sh and launch/gpu.sh under --dry_run: the commands they would run, the
flags they require, and the arguments they pass through to `videomar train`; and the
installs launch/_env.sh makes.

No network and no gcloud: a fake `gcloud` and `nvidia-smi` first on PATH record any call,
and a dry run must make none; _env.sh meets a fake `.venv/bin/python` that logs its calls.
"""

import os
import shlex
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_POD = os.path.join(REPO, "launch", "tpu_pod.sh")
GPU = os.path.join(REPO, "launch", "gpu.sh")
TPU_FLAGS = ("--tpu=my-slice", "--zone=us-west4-a", "--repo=https://example.com/videomar.git",
             "--branch=main", "--workdir=gs://bucket/run")
PASSTHROUGH = ("--config=configs/videomar.py:paper", "--config.mesh.fsdp=16")


@pytest.fixture
def fake_path(tmp_path):
  """A PATH whose `gcloud` and `nvidia-smi` only append their name to `calls.txt`."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("gcloud", "nvidia-smi"):
    script = bin_dir / tool
    script.write_text(f'#!/bin/sh\necho {tool} "$@" >> "{tmp_path}/calls.txt"\nexit 97\n')
    script.chmod(0o755)
  yield f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
  assert not (tmp_path / "calls.txt").exists(), (tmp_path / "calls.txt").read_text()


def _run(fake_path, script, *args):
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION")}
  env["PATH"] = fake_path
  return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=env,
                        timeout=60, check=False)


def _commands(result) -> list[str]:
  assert result.returncode == 0, result.stderr
  return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def _remote_words(command: str) -> list[str]:
  """The words of the `--command=...` a `gcloud ... ssh` line runs on the workers."""
  (remote,) = [w[len("--command="):] for w in shlex.split(command)
               if w.startswith("--command=")]
  return shlex.split(remote)


def _one(commands, *needles) -> str:
  found = [c for c in commands if all(n in c for n in needles)]
  assert len(found) == 1, (needles, commands)
  return found[0]


def test_tpu_pod_creates_installs_and_trains_on_all_workers(fake_path):
  commands = _commands(_run(fake_path, TPU_POD, *TPU_FLAGS, "--dry_run", "--", *PASSTHROUGH))
  create = _one(commands, "gcloud compute tpus tpu-vm create my-slice")
  assert "--zone=us-west4-a" in create and "--accelerator-type=v5litepod-64" in create
  assert "--spot" not in create
  install = _one(commands, "tpu-vm ssh my-slice", "pip install")
  train = _one(commands, "tpu-vm ssh my-slice", "videomar train")
  assert commands.index(create) < commands.index(install) < commands.index(train)
  for ssh in (install, train):
    assert "--worker=all" in shlex.split(ssh) and "--zone=us-west4-a" in shlex.split(ssh)
  words = _remote_words(install)
  assert "git" in words and "clone" in words and "https://example.com/videomar.git" in words
  assert "~/videomar_jax" in words and "-e" in words and "jax[tpu]" in words
  assert "https://storage.googleapis.com/jax-releases/libtpu_releases.html" in words
  words = _remote_words(train)
  start = words.index("train")
  assert words[start + 1:start + 6] == [
      "--workdir=runs/pod", "--config.train.checkpoint_dir=gs://bucket/run/checkpoints",
      "--distributed=auto", *PASSTHROUGH]
  assert words[-3:] == ["tee", "-a", "~/videomar_train.log"]


def test_tpu_pod_passes_awkward_arguments_through_as_single_words(fake_path):
  awkward = ("--config.data.data_dir=gs://bucket/my data", "--config.stages[1].steps=500",
             "it's")
  commands = _commands(_run(fake_path, TPU_POD, *TPU_FLAGS, "--dry_run", "--", *awkward))
  words = _remote_words(_one(commands, "videomar train"))
  start = words.index("--distributed=auto") + 1
  assert tuple(words[start:start + 3]) == awkward


def test_tpu_pod_spot_project_and_runtime_version(fake_path):
  commands = _commands(_run(fake_path, TPU_POD, *TPU_FLAGS, "--dry_run", "--spot",
                            "--project=my-project", "--accelerator=v4-32"))
  create = _one(commands, "tpu-vm create")
  assert "--spot" in create and "--accelerator-type=v4-32" in create
  assert "--version=tpu-ubuntu2204-base" in create
  assert all("--project=my-project" in c for c in commands if c.startswith("gcloud"))
  commands = _commands(_run(fake_path, TPU_POD, *TPU_FLAGS, "--dry_run"))
  assert "--version=v2-alpha-tpuv5-lite" in _one(commands, "tpu-vm create")
  commands = _commands(_run(fake_path, TPU_POD, *TPU_FLAGS, "--dry_run", "--version=custom"))
  assert "--version=custom" in _one(commands, "tpu-vm create")


@pytest.mark.parametrize("missing", ["--tpu", "--zone", "--workdir"])
def test_tpu_pod_requires_tpu_zone_and_workdir(fake_path, missing):
  flags = [f for f in TPU_FLAGS if not f.startswith(missing + "=")]
  result = _run(fake_path, TPU_POD, *flags, "--dry_run")
  assert result.returncode != 0
  assert missing in result.stderr
  assert not result.stdout


def test_tpu_pod_requires_a_shared_gs_workdir(fake_path):
  flags = [f for f in TPU_FLAGS if not f.startswith("--workdir=")] + ["--workdir=runs/local"]
  result = _run(fake_path, TPU_POD, *flags, "--dry_run")
  assert result.returncode != 0 and "not a gs:// path" in result.stderr


def test_tpu_pod_rejects_unknown_flags(fake_path):
  result = _run(fake_path, TPU_POD, *TPU_FLAGS, "--dry_run", "--config=configs/videomar.py")
  assert result.returncode != 0 and "after a literal --" in result.stderr


def test_tpu_pod_resume_only_skips_create_and_install(fake_path):
  commands = _commands(_run(fake_path, TPU_POD, *TPU_FLAGS, "--dry_run", "--resume_only",
                            "--", *PASSTHROUGH))
  assert len(commands) == 1, commands
  assert "--worker=all" in commands[0]
  assert "--distributed=auto" in _remote_words(commands[0])


def test_tpu_pod_delete(fake_path):
  commands = _commands(_run(fake_path, TPU_POD, "--tpu=my-slice", "--zone=us-west4-a",
                            "--delete", "--dry_run"))
  assert commands == ["gcloud compute tpus tpu-vm delete my-slice --zone=us-west4-a --quiet"]


def test_tpu_pod_branch_and_repo_default_to_the_checkout_it_runs_from(fake_path, tmp_path):
  """In a checkout of our own (so the test does not depend on how CI checked this repo
  out): the branch and origin are used; a detached HEAD is an error naming --branch."""
  checkout = tmp_path / "checkout"
  (checkout / "launch").mkdir(parents=True)
  for name in ("tpu_pod.sh", "_launch_lib.sh"):
    (checkout / "launch" / name).write_text(open(os.path.join(REPO, "launch", name)).read())
  git = lambda *a: subprocess.run(["git", "-C", str(checkout), *a], check=True,
                                  capture_output=True, text=True).stdout.strip()
  git("init", "-q", "-b", "feature-x")
  git("remote", "add", "origin", "https://example.com/fork.git")
  git("-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
  git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "launchers")
  script = str(checkout / "launch" / "tpu_pod.sh")
  flags = [f for f in TPU_FLAGS if not f.startswith(("--branch=", "--repo="))]
  words = _remote_words(_one(_commands(_run(fake_path, script, *flags, "--dry_run")),
                             "pip install"))
  assert words[words.index("--branch") + 1] == "feature-x"
  assert "https://example.com/fork.git" in words

  git("checkout", "-q", "--detach")
  result = _run(fake_path, script, *flags, "--dry_run")
  assert result.returncode != 0 and "pass --branch=BRANCH" in result.stderr


def test_help(fake_path):
  for script, flag in ((TPU_POD, "--resume_only"), (GPU, "--skip_install")):
    result = _run(fake_path, script, "--help")
    assert result.returncode == 0 and flag in result.stdout


def test_gpu_installs_and_trains_without_distributed_init(fake_path):
  commands = _commands(_run(fake_path, GPU, "--workdir=runs/gpu", "--dry_run", "--",
                            *PASSTHROUGH))
  install = shlex.split(_one(commands, "pip install"))
  assert install[-3:] == ["-e", ".", "jax[cuda12]"]
  assert "nvidia-smi -L" in commands
  train = shlex.split(_one(commands, "videomar train"))
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9" in train
  assert any(w.startswith("XLA_FLAGS=") and "--xla_gpu_enable_latency_hiding_scheduler=true"
             in w for w in train)
  start = train.index("train")
  assert train[start + 1:] == ["--workdir=runs/gpu", "--distributed=none", *PASSTHROUGH]
  assert commands.index(shlex.join(install)) < commands.index(shlex.join(train))


def test_gpu_skip_install(fake_path):
  commands = _commands(_run(fake_path, GPU, "--workdir=runs/gpu", "--dry_run",
                            "--skip_install"))
  assert not [c for c in commands if "pip install" in c or "-m venv" in c]
  assert "--distributed=none" in _one(commands, "videomar train")


def test_gpu_requires_workdir(fake_path):
  result = _run(fake_path, GPU, "--dry_run", "--", *PASSTHROUGH)
  assert result.returncode != 0 and "--workdir" in result.stderr
  assert not result.stdout


# ---------------------------------------------------------------------------- _env.sh

FAKE_PYTHON = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/../../calls.txt"
if [ "$1 $2" = "-c import torch" ] && [ -n "${NO_TORCH:-}" ]; then exit 1; fi
"""


@pytest.fixture
def checkout(tmp_path):
  """setup.py and launch/ of this checkout, with a `.venv/bin/python` that logs its calls."""
  root = tmp_path / "repo"
  (root / ".venv" / "bin").mkdir(parents=True)
  shutil.copytree(os.path.join(REPO, "launch"), root / "launch")
  shutil.copy(os.path.join(REPO, "setup.py"), root / "setup.py")
  python = root / ".venv" / "bin" / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  return root


def _source_env(root, **env) -> list[str]:
  """The python calls (pip installs) one `source launch/_env.sh` makes."""
  calls = root / "calls.txt"
  calls.unlink(missing_ok=True)
  subprocess.run(["bash", "-c", "source launch/_env.sh"], cwd=root, check=True, timeout=60,
                 env={**os.environ, **env})
  return calls.read_text().splitlines() if calls.exists() else []


def test_env_installs_with_the_constraints_again_when_they_change(checkout):
  install = "-m pip install -q -c launch/constraints.txt -e .[test,torch,tpu]"
  calls = _source_env(checkout)
  assert calls[-1] == install and "-c import torch" in calls
  assert _source_env(checkout) == []  # installed: the stamp is there
  with open(checkout / "launch" / "constraints.txt", "a") as f:
    f.write("six==1.17.0\n")
  assert _source_env(checkout)[-1] == install
  assert len(list((checkout / ".venv").glob(".videomar_installed_*"))) == 1
  # Without the constraints (VIDEOMAR_CONSTRAINTS= ), a plain install.
  assert _source_env(checkout, VIDEOMAR_CONSTRAINTS="")[-1] == "-m pip install -q -e .[test,torch,tpu]"


def test_env_installs_the_tested_torch_first_when_there_is_none(checkout):
  calls = _source_env(checkout, NO_TORCH="1")
  torch = [c for c in calls if "torch==" in c]
  assert torch == ["-m pip install -q --retries 0 --timeout 20 torch==2.13.0 --index-url "
                   "https://download.pytorch.org/whl/cpu"], calls
  assert calls.index(torch[0]) < calls.index(
      "-m pip install -q -c launch/constraints.txt -e .[test,torch,tpu]")
  # Constraints leave torch to this step: a pin there would fight $VIDEOMAR_TORCH.
  constraints = (checkout / "launch" / "constraints.txt").read_text().splitlines()
  assert not [l for l in constraints if l.lower().startswith(("torch=", "nvidia-", "triton"))]


def test_gpu_bench_script_documents_itself_and_rejects_unknown_arguments():
  script = os.path.join(REPO, "launch", "gpu_bench.sh")
  shown = subprocess.run(["bash", script, "--help"], capture_output=True, text=True)
  assert shown.returncode == 0 and "bench sampler" in shown.stdout
  bad = subprocess.run(["bash", script, "--fast"], capture_output=True, text=True)
  assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr
  assert subprocess.run(["bash", "-n", script]).returncode == 0
