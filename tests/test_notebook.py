"""notebooks/quickstart.ipynb: committed without outputs, and it runs top to bottom.

The run injects tiny settings into the cell tagged `parameters` (as papermill would), skips
the install (the package is importable here: no network) and executes every cell with
nbclient in a kernel of this very interpreter on the CPU.
"""

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from videomar_jax.io import video_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "notebooks", "quickstart.ipynb")
KERNEL_NAME = "videomar-notebook-test"
# About 20 s of the run's ~60 s on 2 cores is compiling the training step.
SMALL = dict(INSTALL_FROM="skip", TRAIN_STEPS=20, NUM_TRAIN_CLIPS=16, RESOLUTION=16,
             NUM_FRAMES=4, NUM_STEPS=4)


def _parameters_cell(notebook):
  cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(cells) == 1, f"{len(cells)} cells tagged 'parameters'; want one"
  return cells[0]


def _video_outputs(notebook) -> list[str]:
  """The HTML of every displayed video: our GIF fallback or mediapy's player."""
  found = []
  for cell in notebook.cells:
    for output in cell.get("outputs", []):
      text = output.get("data", {}).get("text/html", "")
      if "data:image/gif;base64," in text or "<video" in text:
        found.append(text)
  return found


def test_committed_notebook_has_no_outputs():
  """Outputs and execution counts in the committed file would make every run a diff."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"cell {index} has outputs: clear them before committing"
      assert cell.execution_count is None, f"cell {index} has an execution count"
  source = _parameters_cell(notebook).source
  for name in SMALL:  # every setting the run below injects is a parameter of the notebook
    assert f"\n{name} = " in "\n" + source, f"{name} is not set in the parameters cell"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  # A kernelspec whose argv[0] is this interpreter, found through JUPYTER_PATH: the kernel
  # sees this venv (and PYTHONPATH), whatever `python3` kernel the machine may have.
  kernels = tmp_path / "jupyter"
  spec_dir = kernels / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "videomar test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(kernels))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")

  notebook = nbformat.read(NOTEBOOK, as_version=4)
  workdir = tmp_path / "run"
  settings = dict(SMALL, WORKDIR=str(workdir))
  cell = _parameters_cell(notebook)
  cell.source += "\n# Injected by tests/test_notebook.py\n" + "\n".join(
      f"{name} = {value!r}" for name, value in settings.items())
  # Run from notebooks/, as Jupyter runs a notebook opened there.
  client = NotebookClient(notebook, timeout=300, kernel_name=KERNEL_NAME,
                          resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on an error

  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert cell.execution_count is not None, f"cell {index} did not run"
      errors = [o for o in cell.outputs if o.output_type == "error"]
      assert not errors, f"cell {index}: {errors}"
  # A training clip, the held-out generation and the own-image generation.
  assert len(_video_outputs(notebook)) == 3
  assert any("image/png" in o.get("data", {}) for c in notebook.cells
             for o in c.get("outputs", [])), "the loss curve was not shown"

  # The MP4s hold every frame (a GIF writer merges repeated frames into one).
  res, frames = SMALL["RESOLUTION"], SMALL["NUM_FRAMES"]
  held_out = video_io.read_frames(str(workdir / "notebook" / "held_out.mp4"))
  assert held_out.shape == (frames, res, 2 * res, 3)  # generated | truth
  own = video_io.read_frames(str(workdir / "notebook" / "own_image.mp4"))
  assert own.shape == (frames, res, res, 3)
  # The drawn first frame (a red and a blue ball) begins the video, resized.
  first = video_io.read_frames(str(workdir / "notebook" / "own_image.gif"))[0]
  first = first.reshape(-1, 3).astype(int)
  assert (first[:, 0] > 200).any() and (first[:, 2] > 200).any()
