"""Static schedules of the sampler: how many tokens each step reveals, and per-frame
temperatures.

Everything here is computed with numpy from static sizes, so the compiled sampler's shapes
never depend on traced values.
"""

import dataclasses
import math
from typing import Sequence

import numpy as np

from videomar_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class UnmaskSchedule:
  """Per step: tokens still masked after the step (`next_masked`), tokens revealed."""
  next_masked: np.ndarray  # [S] int32
  num_revealed: np.ndarray  # [S] int32, sums to N

  @property
  def num_steps(self) -> int:
    return len(self.num_revealed)

  @property
  def max_revealed(self) -> int:
    """The padded per-step width of the diffusion head's batch."""
    return int(self.num_revealed.max())


def cosine_schedule(num_tokens: int, num_steps: int) -> UnmaskSchedule:
  """MAR's schedule: after step s, floor(N * cos(pi/2 * (s+1)/S)) tokens stay masked,
  clamped to [1, masked - 1] so each step reveals at least one; the last step reveals the
  rest."""
  if not 1 <= num_steps <= num_tokens:
    raise ConfigError(f"num_steps={num_steps} must be in [1, tokens per frame={num_tokens}].")
  masked, next_masked = num_tokens, []
  for step in range(num_steps):
    if step == num_steps - 1:
      nxt = 0
    else:
      nxt = int(math.floor(num_tokens * math.cos(math.pi / 2 * (step + 1) / num_steps)))
      nxt = max(1, min(masked - 1, nxt))
    next_masked.append(nxt)
    masked = nxt
  next_masked = np.asarray(next_masked, np.int32)
  revealed = np.concatenate([[num_tokens], next_masked[:-1]]) - next_masked
  return UnmaskSchedule(next_masked, revealed.astype(np.int32))


def next_token_schedule(num_tokens: int) -> UnmaskSchedule:
  """One token per step (the paper's NTP baseline)."""
  next_masked = np.arange(num_tokens - 1, -1, -1, dtype=np.int32)
  return UnmaskSchedule(next_masked, np.ones(num_tokens, np.int32))


def frame_temperatures(kind: str, num_generated: int, start: float = 0.95, end: float = 0.90,
                       values: Sequence[float] = ()) -> np.ndarray:
  """Temperature of each generated frame: constant (`start`), linear start -> end over the
  generated frames (progressive temperature, the authors' default 0.95 -> 0.90), or an
  explicit list."""
  if kind == "constant":
    return np.full(num_generated, start, np.float32)
  if kind == "linear":
    return np.linspace(start, end, num_generated).astype(np.float32)
  if kind == "list":
    if len(values) != num_generated:
      raise ConfigError(f"{len(values)} temperatures given for {num_generated} generated "
                       "frames.")
    return np.asarray(values, np.float32)
  raise ConfigError(f"temperature kind {kind!r} not in ('constant', 'linear', 'list').")
