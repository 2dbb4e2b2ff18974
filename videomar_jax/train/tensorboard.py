"""TensorBoard scalars through tensorboardX, without importing PyTorch.

tensorboardX imports torch when it is installed (the `torch` extra) only to accept torch
tensors as values; the trainers log Python floats. That import costs 2-3 s of every
training process, so it is hidden from tensorboardX while the module loads.
"""

import sys


def summary_writer(logdir: str):
  """A `tensorboardX.SummaryWriter` writing event files into logdir."""
  if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
      import tensorboardX  # pylint: disable=import-outside-toplevel
    finally:
      del sys.modules["torch"]
  import tensorboardX  # pylint: disable=import-outside-toplevel,reimported
  return tensorboardX.SummaryWriter(logdir)
