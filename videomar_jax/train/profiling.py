"""A `jax.profiler` trace of a window of training steps (`config.train.profile_steps`).

`profile_steps = (start, stop)` traces the steps after step `start` up to step `stop`:
the trace starts once `start` steps are done (0 = before the first step, so it holds the
first step's compilation too) and stops once step `stop` is done, after waiting for that
step's arrays (`block_until_ready`), so the trace holds finished device work and not
just its dispatch. `()` (the default) takes no trace.

Every process traces its own devices (a profiler session sees only its process's devices;
JAX's multi-host profiling is one trace per host, read together): one process writes to
`<workdir>/profile`, several to `<workdir>/profile/process_<i>` each (processes sharing a
host would otherwise write files of the same host name into one directory). TensorBoard's
profile plugin or xprof opens the directory (`tensorboard --logdir <workdir>/profile`);
`jax.profiler` writes `plugins/profile/<timestamp>/<host>.xplane.pb` under it.
"""

import glob
import os

import jax

from videomar_jax.errors import ConfigError

_KEY = "config.train.profile_steps"


def parse_window(value) -> tuple[int, int] | None:
  """(start, stop) of a `profile_steps` setting, or None for `()` (off); a bad window is a
  `ConfigError` naming the key."""
  if value is None or (isinstance(value, (tuple, list)) and not value):
    return None
  shape_help = (f"{_KEY} must be two step numbers start,stop with 0 <= start < stop "
                f"(e.g. --{_KEY}=10,15 traces steps 11 to 15), or () for no trace")
  if (not isinstance(value, (tuple, list)) or len(value) != 2
      or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
    raise ConfigError(f"{shape_help}; got {value!r}.")
  start, stop = value
  if start < 0 or stop <= start:
    raise ConfigError(f"{shape_help}; got {start},{stop}.")
  return start, stop


def trace_dir(workdir: str) -> str:
  """Where this process writes its trace."""
  root = os.path.join(os.path.abspath(workdir), "profile")
  if jax.process_count() == 1:
    return root
  return os.path.join(root, f"process_{jax.process_index()}")


class StepProfiler:
  """Starts and stops the trace at the window's step boundaries. Call `before_step(step)`
  with the number of steps done before each step runs, `after_step(step, outputs)` with
  the number done after it and what that step returned, and `close(outputs)` at the end:
  it stops a trace still running when the run ends, or stops, inside the window."""

  def __init__(self, setting, workdir: str, is_main: bool = True):
    self.window = parse_window(setting)
    self.directory = trace_dir(workdir)
    self.is_main = is_main
    self._active = self._taken = False
    self._first_step = self._last_step = 0

  def before_step(self, step: int) -> None:
    if self.window is None or self._active or self._taken:
      return
    start, stop = self.window
    if start <= step < stop:  # a run resumed inside the window traces the rest of it
      os.makedirs(self.directory, exist_ok=True)
      jax.profiler.start_trace(self.directory)
      self._active, self._first_step = True, step + 1

  def after_step(self, step: int, outputs) -> None:
    if self._active:
      self._last_step = step
      if step >= self.window[1]:
        self._finish(outputs)

  def close(self, outputs=None) -> None:
    if self._active:
      self._finish(outputs)

  def _finish(self, outputs) -> None:
    if outputs is not None:
      jax.block_until_ready(outputs)  # the window's last step has run, not just dispatched
    jax.profiler.stop_trace()
    self._active, self._taken = False, True
    if self.is_main:
      traces = glob.glob(os.path.join(self.directory, "plugins", "profile", "*",
                                      "*.xplane.pb"))
      newest = max(traces, key=os.path.getmtime) if traces else self.directory
      where = ("" if jax.process_count() == 1 else
               f"; every process writes its own under {os.path.dirname(self.directory)}")
      print(f"Profiler trace of steps {self._first_step}..{self._last_step} written to "
            f"{newest} (TensorBoard's profile plugin or xprof opens it{where}).", flush=True)
