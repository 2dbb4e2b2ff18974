"""TensorBoard scalars and sample videos through tensorboardX, without importing PyTorch.

tensorboardX imports torch when it is installed (the `torch` extra) only to accept torch
tensors as values; the trainers log Python floats. That import costs 2-3 s of every
training process, so it is hidden from tensorboardX while the module loads.
"""

import io
import sys

import numpy as np


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


def write_video_samples(writer, tag: str, video: np.ndarray, step: int, fps: int = 4) -> None:
  """uint8 clips [B, F, H, W, 3] as two image summaries: `<tag>/frames`, a contact sheet
  (one row of frames per clip), and `<tag>/video`, an animated GIF of the clips side by side,
  which TensorBoard's Images tab plays (tensorboardX's `add_video` would need moviepy; this
  is the same summary, encoded with Pillow). Small frames are scaled up to be seen."""
  video = np.asarray(video, np.uint8)
  scale = max(1, 128 // video.shape[2])
  video = video.repeat(scale, axis=2).repeat(scale, axis=3)
  gap = 2  # white pixels between clips and frames
  padded = np.pad(video, ((0, 0), (0, 0), (0, gap), (0, gap), (0, 0)), constant_values=255)
  b, f, h, w, c = padded.shape
  sheet = padded.transpose(0, 2, 1, 3, 4).reshape(b * h, f * w, c)[:-gap, :-gap]
  writer.add_image(f"{tag}/frames", sheet, step, dataformats="HWC")
  frames = padded.transpose(1, 2, 0, 3, 4).reshape(f, h, b * w, c)[:, :-gap, :-gap]
  writer.file_writer.add_summary(_gif_summary(f"{tag}/video", frames, fps), step)
  writer.flush()


def _gif_summary(tag: str, frames: np.ndarray, fps: int):
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from tensorboardX.proto.summary_pb2 import Summary  # pylint: disable=import-outside-toplevel
  images = [Image.fromarray(frame) for frame in frames]
  out = io.BytesIO()
  images[0].save(out, format="GIF", save_all=True, append_images=images[1:],
                 duration=int(1000 / fps), loop=0)
  _, height, width, channels = frames.shape
  return Summary(value=[Summary.Value(tag=tag, image=Summary.Image(
      height=height, width=width, colorspace=channels, encoded_image_string=out.getvalue()))])
