"""Built-in synthetic dataset: coloured balls bouncing under gravity.

Every clip is fully determined by its first frame:

* ``K`` balls of radius ``radius`` (pixels) start **at rest vertically** (``vy = 0``)
  at integer pixel positions, fully inside the frame and without overlapping, so
  every ball is completely visible in the first frame.
* Gravity ``gravity`` (px/frame^2) pulls them down (``y`` grows downward). The floor
  is at ``y = resolution - 1 - radius``; a bounce flips and damps the vertical
  velocity: ``vy -> -restitution * vy``.
* Horizontal velocity is a property of the **colour**: every palette entry has its
  own fixed ``vx`` (px/frame, :data:`PALETTE_VX`). The side walls
  (``x = radius`` and ``x = resolution - 1 - radius``) reflect ``vx`` elastically.
* Balls do not interact; they are drawn in ball order (later balls on top) as filled,
  non-anti-aliased discs on a black background. Colours within a clip are distinct.

Because the colour fixes ``vx``, the first frame fixes ``vy = 0``, and the disc
masks of the first frame give the exact integer starting centres, a model can in
principle predict the whole clip from its first frame, which is what an
image-to-video generator is asked to do.

The TFDS builder :class:`BouncingBalls` writes ``array_record`` files (TensorFlow is
not needed) and is read with random access via ``builder.as_data_source(split)``::

    from videomar_jax.data import bouncing_balls
    builder = bouncing_balls.build("/tmp/tfds", num_train_clips=256)
    train = builder.as_data_source("train")      # or bouncing_balls.load(...)
    example = train[0]                            # dict of numpy arrays
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from videomar_jax.data import integrity

__all__ = [
    "PALETTE_NAMES",
    "PALETTE_RGB",
    "PALETTE_VX",
    "BouncingBalls",
    "BouncingBallsConfig",
    "DEFAULT_CONFIG",
    "build",
    "config_from_name",
    "load",
    "make_config",
    "make_example",
    "render",
    "sample_initial_state",
    "simulate",
]

# --------------------------------------------------------------------------------------
# Palette: colour -> RGB and colour -> horizontal velocity (px/frame).
# --------------------------------------------------------------------------------------

#: Human-readable names of the palette entries (index = colour id).
PALETTE_NAMES: tuple[str, ...] = (
    "red",
    "green",
    "blue",
    "yellow",
    "magenta",
    "cyan",
    "orange",
    "violet",
)

#: Saturated RGB colours, ``uint8 [num_colours, 3]``; all distinct and non-black.
PALETTE_RGB: np.ndarray = np.array(
    [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [255, 0, 255],
        [0, 255, 255],
        [255, 128, 0],
        [128, 0, 255],
    ],
    dtype=np.uint8,
)

#: Horizontal velocity of each colour in px/frame, ``float64 [num_colours]``.
#: All values are distinct and non-zero; half of them move left.
PALETTE_VX: np.ndarray = np.array(
    [1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.75, -0.75], dtype=np.float64
)

PALETTE_RGB.setflags(write=False)
PALETTE_VX.setflags(write=False)

# Bounces slower than this (px/frame) are treated as the ball coming to rest on the
# floor, which ends the otherwise infinite sequence of ever smaller hops.
_REST_SPEED = 1e-6
# Maximum number of floor contacts resolved exactly inside one substep.
_MAX_BOUNCES_PER_SUBSTEP = 8


# --------------------------------------------------------------------------------------
# Physics and rendering (pure numpy).
# --------------------------------------------------------------------------------------


def _advance_vertical(
    y: np.ndarray,
    vy: np.ndarray,
    dt: float,
    gravity: float,
    restitution: float,
    floor: float,
) -> tuple[np.ndarray, np.ndarray]:
  """Advances the vertical motion by ``dt`` frames with exact floor collisions.

  Within the step the motion is a parabola, so the time of floor contact is solved
  in closed form, the velocity is reflected and damped at that instant and the
  remaining time is integrated from the floor. Up to
  :data:`_MAX_BOUNCES_PER_SUBSTEP` contacts are resolved per call; a ball that still
  has time left after that (a vanishing Zeno sequence of hops) is put to rest.
  """
  remaining = np.full_like(y, dt)
  for _ in range(_MAX_BOUNCES_PER_SUBSTEP):
    active = remaining > 0
    if not np.any(active):
      break
    gap = np.maximum(floor - y, 0.0)
    root = np.sqrt(vy * vy + 2.0 * gravity * gap)
    # Positive root of 0.5*g*t^2 + vy*t - gap = 0 in a cancellation-free form.
    falling = vy >= 0
    t_hit = np.where(
        falling,
        2.0 * gap / np.where(vy + root > 0, vy + root, 1.0),
        (root - vy) / gravity,
    )
    t_hit = np.where(falling & (vy + root <= 0), 0.0, t_hit)
    hit = active & (t_hit < remaining)
    t = np.where(hit, t_hit, remaining)
    y_new = y + vy * t + 0.5 * gravity * t * t
    vy_new = vy + gravity * t
    y = np.where(hit, floor, np.where(active, np.minimum(y_new, floor), y))
    vy = np.where(hit, -restitution * vy_new, np.where(active, vy_new, vy))
    remaining = np.where(active, remaining - t, remaining)
    at_rest = hit & (np.abs(vy) < _REST_SPEED)
    vy = np.where(at_rest, 0.0, vy)
    remaining = np.where(at_rest, 0.0, remaining)
  # Any time left is spent resting on the floor.
  unresolved = remaining > 0
  y = np.where(unresolved, floor, y)
  vy = np.where(unresolved, 0.0, vy)
  return y, vy


def _advance_horizontal(
    x: np.ndarray, vx: np.ndarray, dt: float, left: float, right: float
) -> tuple[np.ndarray, np.ndarray]:
  """Advances the horizontal motion by ``dt`` frames with elastic side walls."""
  x = x + vx * dt
  # Reflections are exact for uniform motion; loop in case of several wall hits
  # within one step (only possible for very narrow frames or fast colours).
  for _ in range(64):
    over = x > right
    under = x < left
    if not (np.any(over) or np.any(under)):
      break
    x = np.where(over, 2.0 * right - x, np.where(under, 2.0 * left - x, x))
    vx = np.where(over | under, -vx, vx)
  return x, vx


def simulate(
    initial_centres: np.ndarray,
    colour_ids: np.ndarray,
    *,
    num_frames: int,
    resolution: int,
    radius: int,
    gravity: float,
    restitution: float,
    substeps: int,
) -> np.ndarray:
  """Simulates the ball trajectories from their first-frame centres.

  Args:
    initial_centres: ``[K, 2]`` centres at frame 0 as ``(x, y)`` = (column, row)
      in pixel units, ``y`` growing downward. Balls start with ``vy = 0``.
    colour_ids: ``[K]`` palette indices; ball ``k`` moves horizontally with
      ``PALETTE_VX[colour_ids[k]]`` px/frame.
    num_frames: number of frames ``F`` (frame 0 is the initial state).
    resolution: frame side length in pixels.
    radius: ball radius in pixels; centres start and stay within
      ``[radius, resolution - 1 - radius]`` on both axes.
    gravity: downward acceleration in px/frame^2 (must be positive).
    restitution: velocity factor applied on each floor bounce, in ``[0, 1]``.
    substeps: integration steps per frame. Floor contacts are solved in closed
      form inside every substep, so more substeps only matter for resolving many
      tiny hops of a ball settling on the floor.

  Returns:
    ``float64 [F, K, 2]`` centres ``(x, y)`` for every frame.
  """
  centres0 = np.asarray(initial_centres, dtype=np.float64)
  colour_ids = np.asarray(colour_ids)
  if centres0.ndim != 2 or centres0.shape[1] != 2:
    raise ValueError(f"initial_centres must have shape [K, 2], got {centres0.shape}")
  if colour_ids.shape != (centres0.shape[0],):
    raise ValueError(
        f"colour_ids must have shape [K] = [{centres0.shape[0]}], "
        f"got {colour_ids.shape}"
    )
  if np.any(colour_ids < 0) or np.any(colour_ids >= len(PALETTE_VX)):
    raise ValueError(
        f"colour_ids must be in [0, {len(PALETTE_VX)}), got {colour_ids.tolist()}"
    )
  _validate_physics(num_frames, resolution, radius, gravity, restitution, substeps)

  lo = float(radius)
  hi = float(resolution - 1 - radius)
  if np.any(centres0 < lo) or np.any(centres0 > hi):
    raise ValueError(
        f"initial centres must lie in [{lo}, {hi}] (radius {radius}, resolution "
        f"{resolution}), got {centres0.tolist()}"
    )
  x, y = centres0[:, 0].copy(), centres0[:, 1].copy()
  vx = PALETTE_VX[colour_ids].astype(np.float64)
  vy = np.zeros_like(y)
  dt = 1.0 / substeps

  out = np.empty((num_frames, centres0.shape[0], 2), dtype=np.float64)
  out[0, :, 0] = x
  out[0, :, 1] = y
  for frame in range(1, num_frames):
    for _ in range(substeps):
      x, vx = _advance_horizontal(x, vx, dt, lo, hi)
      y, vy = _advance_vertical(y, vy, dt, gravity, restitution, hi)
    out[frame, :, 0] = x
    out[frame, :, 1] = y
  return out


def render(
    centres: np.ndarray, colour_ids: np.ndarray, resolution: int, radius: int
) -> np.ndarray:
  """Draws the balls as filled discs on a black background.

  A pixel at (row ``i``, column ``j``) belongs to ball ``k`` in frame ``f`` iff
  ``(j - x)^2 + (i - y)^2 <= radius^2`` with ``(x, y) = centres[f, k]``. Balls are
  drawn in order, so later balls cover earlier ones. No anti-aliasing.

  Args:
    centres: ``[F, K, 2]`` centres ``(x, y)`` in pixels.
    colour_ids: ``[K]`` palette indices.
    resolution: output side length.
    radius: disc radius in pixels.

  Returns:
    ``uint8 [F, resolution, resolution, 3]`` frames.
  """
  centres = np.asarray(centres, dtype=np.float64)
  colour_ids = np.asarray(colour_ids)
  if centres.ndim != 3 or centres.shape[2] != 2:
    raise ValueError(f"centres must have shape [F, K, 2], got {centres.shape}")
  if colour_ids.shape != (centres.shape[1],):
    raise ValueError(
        f"colour_ids must have shape [K] = [{centres.shape[1]}], got {colour_ids.shape}"
    )
  num_frames = centres.shape[0]
  grid = np.arange(resolution, dtype=np.float64)
  frames = np.zeros((num_frames, resolution, resolution, 3), dtype=np.uint8)
  for k, colour_id in enumerate(colour_ids):
    dx = grid[None, None, :] - centres[:, k, 0][:, None, None]  # [F, 1, W]
    dy = grid[None, :, None] - centres[:, k, 1][:, None, None]  # [F, H, 1]
    mask = dx * dx + dy * dy <= float(radius) ** 2  # [F, H, W]
    frames[mask] = PALETTE_RGB[colour_id]
  return frames


def sample_initial_state(
    rng: np.random.Generator, *, resolution: int, num_balls: int, radius: int
) -> tuple[np.ndarray, np.ndarray]:
  """Samples distinct colours and non-overlapping integer starting centres.

  Centres are integers in ``[radius, resolution - 1 - radius]`` (discs fully inside
  the frame) with pairwise distance ``> 2 * radius`` (discs share no pixel), so the
  first rendered frame shows every ball in full and the centre of each colour's
  mask is exactly the ball's centre.

  Returns:
    ``(centres int64 [K, 2], colour_ids int64 [K])``.
  """
  if num_balls > len(PALETTE_RGB):
    raise ValueError(
        f"num_balls={num_balls} exceeds the palette size {len(PALETTE_RGB)}; "
        "colours within a clip must be distinct"
    )
  lo, hi = radius, resolution - 1 - radius
  if hi < lo:
    raise ValueError(
        f"radius={radius} is too large for resolution={resolution}: "
        "a ball does not fit in the frame"
    )
  colour_ids = rng.choice(len(PALETTE_RGB), size=num_balls, replace=False)
  for _ in range(1000):
    centres = rng.integers(lo, hi + 1, size=(num_balls, 2))
    diff = centres[:, None, :] - centres[None, :, :]
    dist2 = np.sum(diff * diff, axis=-1)
    np.fill_diagonal(dist2, np.iinfo(np.int64).max)
    if np.all(dist2 > (2 * radius) ** 2):
      return centres.astype(np.int64), colour_ids.astype(np.int64)
  raise ValueError(
      f"could not place {num_balls} non-overlapping balls of radius {radius} in a "
      f"{resolution}x{resolution} frame; use fewer or smaller balls"
  )


def _validate_physics(
    num_frames: int,
    resolution: int,
    radius: int,
    gravity: float,
    restitution: float,
    substeps: int,
) -> None:
  if num_frames < 1:
    raise ValueError(f"num_frames must be >= 1, got {num_frames}")
  if radius < 0 or resolution - 1 - 2 * radius < 0:
    raise ValueError(
        f"radius={radius} does not fit in a frame of resolution {resolution}"
    )
  if not gravity > 0:
    raise ValueError(f"gravity must be positive, got {gravity}")
  if not 0.0 <= restitution <= 1.0:
    raise ValueError(f"restitution must be in [0, 1], got {restitution}")
  if substeps < 1:
    raise ValueError(f"substeps must be >= 1, got {substeps}")


# --------------------------------------------------------------------------------------
# TFDS builder.
# --------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
  """Formats a config value for a TFDS config name (``[\\w+\\-.]`` characters)."""
  if isinstance(value, float):
    text = repr(value)
  else:
    text = str(value)
  return text.replace(".", "p").replace("-", "m").replace("+", "")


# Short tags used in config names, in order.
_NAME_TAGS: tuple[tuple[str, str], ...] = (
    ("num_train_clips", "train"),
    ("num_test_clips", "test"),
    ("num_frames", "f"),
    ("resolution", "res"),
    ("num_balls", "k"),
    ("radius", "rad"),
    ("gravity", "g"),
    ("restitution", "e"),
    ("substeps", "sub"),
    ("seed", "seed"),
)


@dataclasses.dataclass(eq=False)
class BouncingBallsConfig(tfds.core.BuilderConfig):
  """Settings of one bouncing-balls dataset variant.

  Build instances with :func:`make_config`, which derives ``name`` from the values
  so that different settings are stored in different directories.

  Attributes:
    num_train_clips: number of clips in the 'train' split.
    num_test_clips: number of clips in the 'test' split.
    num_frames: frames per clip.
    resolution: frame side length in pixels (frames are square).
    num_balls: balls per clip (at most the palette size).
    radius: ball radius in pixels.
    gravity: downward acceleration in px/frame^2.
    restitution: vertical speed factor on a floor bounce.
    substeps: integration substeps per frame.
    seed: base random seed; 'train' and 'test' derive different streams from it.
  """

  num_train_clips: int = 1024
  num_test_clips: int = 64
  num_frames: int = 16
  resolution: int = 32
  num_balls: int = 2
  radius: int = 3
  gravity: float = 0.5
  restitution: float = 0.9
  substeps: int = 4
  seed: int = 0

  def __reduce__(self):
    # Unpickle (e.g. in grain worker processes) to the canonical cached object:
    # TFDS rejects a config that equals, but is not, the one it resolves by name.
    return (config_from_name, (self.name,))

  def physics_kwargs(self) -> dict[str, Any]:
    """Keyword arguments for :func:`simulate` (except centres and colours)."""
    return dict(
        num_frames=self.num_frames,
        resolution=self.resolution,
        radius=self.radius,
        gravity=self.gravity,
        restitution=self.restitution,
        substeps=self.substeps,
    )


_CONFIG_FIELDS = tuple(tag[0] for tag in _NAME_TAGS)


def _config_name(values: dict[str, Any]) -> str:
  return "_".join(f"{tag}{_format_value(values[field])}" for field, tag in _NAME_TAGS)


def _new_config(**values: Any) -> BouncingBallsConfig:
  defaults = {f.name: f.default for f in dataclasses.fields(BouncingBallsConfig)}
  merged = {field: defaults[field] for field in _CONFIG_FIELDS}
  merged.update(values)
  # Normalise types so that e.g. gravity=1 and gravity=1.0 give the same name.
  for field in ("gravity", "restitution"):
    merged[field] = float(merged[field])
  for field in _CONFIG_FIELDS:
    if field not in ("gravity", "restitution"):
      merged[field] = int(merged[field])
  _validate_physics(
      merged["num_frames"],
      merged["resolution"],
      merged["radius"],
      merged["gravity"],
      merged["restitution"],
      merged["substeps"],
  )
  if merged["num_train_clips"] < 1 or merged["num_test_clips"] < 1:
    raise ValueError(
        "num_train_clips and num_test_clips must be >= 1, got "
        f"{merged['num_train_clips']} and {merged['num_test_clips']}"
    )
  if not 1 <= merged["num_balls"] <= len(PALETTE_RGB):
    raise ValueError(
        f"num_balls must be in [1, {len(PALETTE_RGB)}], got {merged['num_balls']}"
    )
  if not 0 <= merged["seed"] < 2**32:
    raise ValueError(f"seed must be in [0, 2**32), got {merged['seed']}")
  name = _config_name(merged)
  description = "Bouncing balls: " + ", ".join(f"{k}={merged[k]}" for k in _CONFIG_FIELDS)
  return BouncingBallsConfig(name=name, description=description, **merged)


# Configs by name: a name always resolves to the same object, which TFDS requires
# for configs it knows (see ``BouncingBalls.get_builder_config``).
_CONFIGS_BY_NAME: dict[str, BouncingBallsConfig] = {}


def make_config(**overrides: Any) -> BouncingBallsConfig:
  """Returns the config with the given fields overridden; its name encodes all values.

  Equal settings give the identical (cached) object.

  Raises:
    ValueError: on unknown fields or invalid values.
  """
  unknown = sorted(set(overrides) - set(_CONFIG_FIELDS))
  if unknown:
    raise ValueError(
        f"unknown bouncing-balls config fields {unknown}; known: {list(_CONFIG_FIELDS)}"
    )
  config = _new_config(**overrides)
  return _CONFIGS_BY_NAME.setdefault(config.name, config)


def config_from_name(name: str) -> BouncingBallsConfig:
  """Inverse of the config naming: parses e.g. ``'train1024_test64_..._seed0'``.

  Raises:
    ValueError: if ``name`` is not a bouncing-balls config name.
  """
  parts = name.split("_")
  if len(parts) != len(_NAME_TAGS):
    raise ValueError(f"{name!r} is not a bouncing-balls config name")
  values: dict[str, Any] = {}
  for part, (field, tag) in zip(parts, _NAME_TAGS):
    text = part[len(tag) :].replace("p", ".").replace("m", "-")
    if not part.startswith(tag) or not text:
      raise ValueError(f"{name!r} is not a bouncing-balls config name")
    try:
      values[field] = float(text) if field in ("gravity", "restitution") else int(text)
    except ValueError as error:
      raise ValueError(f"{name!r} is not a bouncing-balls config name") from error
  config = make_config(**values)
  if config.name != name:
    raise ValueError(f"{name!r} is not a canonical bouncing-balls config name")
  return config


#: The default configuration (the builder's only pre-registered config).
DEFAULT_CONFIG: BouncingBallsConfig = make_config()


# Split name -> index mixed into the seed so the streams differ.
_SPLIT_IDS = {"train": 0, "test": 1}


def _split_initial_states(
    config: BouncingBallsConfig, split: str
) -> list[tuple[np.ndarray, np.ndarray]]:
  """Deterministically samples the initial states of one split.

  'test' states never coincide with a 'train' state, so the splits are disjoint.
  """
  num = {"train": config.num_train_clips, "test": config.num_test_clips}[split]

  def sample(split_name: str, count: int, exclude: set[bytes]):
    rng = np.random.default_rng([config.seed, _SPLIT_IDS[split_name]])
    states, attempts = [], 0
    while len(states) < count:
      attempts += 1
      if attempts > 100 * count + 1000:
        raise ValueError(
            f"could not sample {count} '{split_name}' clips distinct from the "
            f"'train' split for config {config.name}; the space of initial "
            "states is too small, use fewer clips or a larger resolution"
        )
      centres, colour_ids = sample_initial_state(
          rng,
          resolution=config.resolution,
          num_balls=config.num_balls,
          radius=config.radius,
      )
      key = _state_key(centres, colour_ids)
      if key in exclude:
        continue
      states.append((centres, colour_ids))
    return states

  if split == "train":
    return sample("train", num, set())
  train_keys = {_state_key(*s) for s in sample("train", config.num_train_clips, set())}
  return sample(split, num, train_keys)


def _state_key(centres: np.ndarray, colour_ids: np.ndarray) -> bytes:
  """Order-independent identity of an initial state (what the first frame shows)."""
  rows = np.concatenate([colour_ids[:, None], centres], axis=1).astype(np.int64)
  rows = rows[np.lexsort(rows.T[::-1])]
  return rows.tobytes()


def make_example(
    centres0: np.ndarray, colour_ids: np.ndarray, config: BouncingBallsConfig
) -> dict[str, np.ndarray]:
  """Simulates and renders one clip; returns the feature dict of one example."""
  centres = simulate(centres0, colour_ids, **config.physics_kwargs())
  return _example_from_trajectory(centres, colour_ids, config)


def _example_from_trajectory(
    centres: np.ndarray, colour_ids: np.ndarray, config: BouncingBallsConfig
) -> dict[str, np.ndarray]:
  frames = render(centres, colour_ids, config.resolution, config.radius)
  return {
      "frames": frames,
      "centres": centres.astype(np.float32),
      "colour_ids": np.asarray(colour_ids, dtype=np.int32),
      "colours": PALETTE_RGB[colour_ids].astype(np.uint8),
  }


class BouncingBalls(tfds.core.GeneratorBasedBuilder):
  """TFDS builder for the bouncing-balls dataset (registered as ``bouncing_balls``).

  Use with ``file_format="array_record"`` and read through
  ``as_data_source(split)``; see the module docstring.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [DEFAULT_CONFIG]
  DEFAULT_CONFIG_NAME = DEFAULT_CONFIG.name

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """Path of this module.

    TFDS's generic implementation needs the optional ``importlib_resources``
    package for builders that live outside ``tensorflow_datasets``; the plain
    source file path is what it falls back to anyway.
    """
    return epath.Path(inspect.getfile(cls))

  @classmethod
  def get_builder_config(
      cls, name: str, version: str | tfds.core.Version | None = None
  ) -> BouncingBallsConfig | None:
    """Resolves any canonical config name, not only the pre-registered default.

    This lets ``BouncingBalls(config=make_config(...))`` and
    ``tfds.builder("bouncing_balls/<config name>")`` work for every setting.
    """
    config = super().get_builder_config(name=name, version=version)
    if config is not None:
      return config
    try:
      return config_from_name(name)
    except ValueError:
      return None

  def _info(self) -> tfds.core.DatasetInfo:
    config: BouncingBallsConfig = self.builder_config
    f, r, k = config.num_frames, config.resolution, config.num_balls
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Synthetic clips of coloured balls falling under gravity and bouncing "
            "on the floor; each colour has its own horizontal velocity, so a clip "
            "is fully determined by its first frame. " + (config.description or "")
        ),
        features=tfds.features.FeaturesDict(
            {
                # zlib: the mostly black frames compress ~10x, and the numpy
                # decoder handles it without TensorFlow.
                "frames": tfds.features.Tensor(
                    shape=(f, r, r, 3),
                    dtype=np.uint8,
                    encoding=tfds.features.Encoding.ZLIB,
                ),
                "centres": tfds.features.Tensor(shape=(f, k, 2), dtype=np.float32),
                "colour_ids": tfds.features.Tensor(shape=(k,), dtype=np.int32),
                "colours": tfds.features.Tensor(shape=(k, 3), dtype=np.uint8),
            }
        ),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in _SPLIT_IDS}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    config: BouncingBallsConfig = self.builder_config
    states = _split_initial_states(config, split)
    # Balls never interact, so all balls of the split are simulated in one call.
    k = config.num_balls
    all_centres0 = np.concatenate([centres for centres, _ in states], axis=0)
    all_colour_ids = np.concatenate([colour_ids for _, colour_ids in states], axis=0)
    all_centres = simulate(all_centres0, all_colour_ids, **config.physics_kwargs())
    for index, (_, colour_ids) in enumerate(states):
      centres = all_centres[:, index * k : (index + 1) * k]
      yield index, _example_from_trajectory(centres, colour_ids, config)


def build(data_dir: str, **overrides: Any) -> BouncingBalls:
  """Returns the prepared builder for ``make_config(**overrides)`` under ``data_dir``.

  Generates and writes the array_record files on first use; later calls only read
  the stored metadata. Progress bars are disabled. A stored dataset whose metadata is
  missing or unreadable (an interrupted build) is a `DatasetFileError` naming the folder.
  """
  config = make_config(**overrides)
  return integrity.prepare_builtin(
      lambda: BouncingBalls(data_dir=str(data_dir), config=config, file_format="array_record"),
      os.path.join(str(data_dir), "bouncing_balls", config.name), "bouncing_balls")


def load(data_dir: str, split: str, **overrides: Any):
  """Builds if needed and returns the random-access source of ``split``.

  The source supports ``len(source)`` and ``source[i]`` (a dict of numpy arrays
  with keys ``frames``, ``centres``, ``colour_ids`` and ``colours``) and can be fed
  to :func:`videomar_jax.data.pipeline.make_loader`.
  """
  if split not in _SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; known: {list(_SPLIT_IDS)}")
  builder = build(data_dir, **overrides)
  hint = (f"Delete {builder.data_dir} and run again: the built-in dataset is rebuilt on "
          "first use (or with `videomar data build`).")
  return integrity.check_split(builder.as_data_source(split),
                               integrity.tfds_shards(builder, split), hint)
