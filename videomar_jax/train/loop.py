"""Loop pieces both trainers share: the preemption flag, the metrics log with its NaN guard
and progress line, and the checkpoint cadence.

Kept apart from either trainer so that a fix (say, how Ctrl-C is named, or what a resumed
run does with rows logged after its last checkpoint) lands in both at once.
"""

import contextlib
import json
import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from videomar_jax.train import tensorboard
from videomar_jax.train.loss_report import truncate_metrics


class NonFiniteLossError(RuntimeError):
  """Raised when a step's loss or gradient norm is NaN or Inf."""


class PreemptionFlag:
  """Set by SIGTERM (preemption) or a first SIGINT (Ctrl-C); the loop checks it at step
  boundaries, saves and stops. A second Ctrl-C stops at once (KeyboardInterrupt), keeping
  the newest finished checkpoint.

  With `jax.distributed` initialised, JAX's preemption service is consulted too
  (`multihost_utils.reached_preemption_sync_point`): the coordination service spreads a
  preemption notice (e.g. of a TPU maintenance event) seen by any host to all of them, and
  they agree on one step to stop at, even where no host of this run gets a SIGTERM.
  """

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.raised = False
    self.signal_name = ""
    self.sync_point = False  # stopping because JAX's preemption service said so
    self._sync_service = True  # until JAX says it has none
    self._previous = {}

  def __enter__(self):
    for signum in self._SIGNALS:
      if signum == signal.SIGTERM and _jax_hears_sigterm():
        # JAX's preemption notifier holds SIGTERM (a C handler installed by
        # jax.distributed.initialize) and spreads it to every host through the sync point; a
        # Python handler here would replace it and the service would never hear of it.
        continue
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # not the main thread: no handler, no preemption support
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.raised:
      raise KeyboardInterrupt
    self.raised = True
    self.signal_name = signal.Signals(signum).name
    if signum == signal.SIGINT and jax.process_index() == 0:
      print("Ctrl-C: saving a checkpoint at the next step, then stopping (Ctrl-C again to "
            "stop now without saving).", flush=True)

  def agreed(self, step: int, check_now: bool) -> bool:
    """Whether to stop after `step`, the same answer on every process. Call it at every step
    on every process.

    A signal: this process's flag with one process; with several, whether any process has
    it, asked only when `check_now` (a small all-gather, so not every step). JAX's
    preemption sync point: asked every step (a local lookup; the service picks the step
    after the newest one any host had reported, so it must see every step, as Orbax's own
    calls with the step do too).
    """
    if self._reached_sync_point(step):
      self.sync_point = True
      return True
    if jax.process_count() == 1:
      return self.raised
    if not check_now:
      return False
    flags = multihost_utils.process_allgather(np.int32(self.raised))
    return bool(np.any(flags))

  def _reached_sync_point(self, step: int) -> bool:
    """JAX's preemption sync point; False without `jax.distributed` (JAX answers that
    itself) or when it runs without the preemption service (`jax_enable_preemption_service`
    off: then JAX raises, once per process, and it is not asked again)."""
    if not self._sync_service:
      return False
    try:
      return bool(multihost_utils.reached_preemption_sync_point(step))
    except RuntimeError as e:
      if "not been initialized" not in str(e):
        raise
      self._sync_service = False
      return False

  def stop_message(self, step: int) -> str:
    if self.sync_point:
      return (f"Preemption notice (SIGTERM to some host, or a TPU maintenance event) from "
              f"JAX's preemption service: saved checkpoint {step} and stopping.")
    # With several processes another one may be the one signalled (a preemption: SIGTERM).
    return (f"{self.signal_name or 'SIGTERM'} received: saved checkpoint {step} and "
            "stopping.")

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      if previous is not None:  # None: a handler not installed from Python, left as it was
        signal.signal(signum, previous)


def _jax_hears_sigterm() -> bool:
  """Whether JAX's preemption service runs in this (multi-process) job: its notifier then
  handles SIGTERM."""
  if jax.process_count() == 1:
    return False
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


def must_sample(step: int, total_steps: int, sample_every: int) -> bool:
  """Samples go to TensorBoard every `sample_every` steps (0 = never) and at the last step."""
  return sample_every > 0 and (step % sample_every == 0 or step == total_steps)


def must_save(step: int, end: int, checkpoint_every: int, preempted: bool) -> bool:
  """The checkpoint cadence: every `checkpoint_every` steps, at the end of a stage (or of
  training), and when stopping for a preemption."""
  return step % checkpoint_every == 0 or step == end or preempted


def format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsLog:
  """`<workdir>/metrics.jsonl` (one row per step), the progress line and TensorBoard.

  Opening it forgets the rows a killed run logged after `resume_step` (its last checkpoint),
  so a resumed run leaves one row per step. `record` refuses non-finite values before they
  are written, naming the last good checkpoint; `progress` prints step, the `shown` values,
  lr, steps/s since the previous progress line and the ETA. Only process 0 writes; the others
  get a log that checks but writes nothing.
  """

  def __init__(self, workdir: str, resume_step: int, total_steps: int, checkpointer,
               schedule=None, shown: tuple[str, ...] = ("loss", "grad_norm"),
               is_main: bool = True):
    self.total_steps, self.checkpointer, self.schedule = total_steps, checkpointer, schedule
    self.shown, self.is_main = shown, is_main
    if is_main:
      truncate_metrics(workdir, resume_step)
      self._file = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self.writer = tensorboard.summary_writer(os.path.join(workdir, "tensorboard"))
    else:
      self._file, self.writer = open(os.devnull, "w"), None
    self._window_start, self._window_steps = time.perf_counter(), 0

  def record(self, step: int, values: dict) -> dict:
    """Checks and writes one step's metrics (floats); returns them."""
    bad = {k: v for k, v in values.items() if not np.isfinite(v)}
    if bad:
      latest = self.checkpointer.latest_step()
      kept = (f"the last good checkpoint is step {latest} in {self.checkpointer.directory}"
              if latest is not None else "no checkpoint had been written yet")
      raise NonFiniteLossError(f"non-finite training metrics at step {step}: {bad}. "
                               f"Stopping; {kept} and was not overwritten.")
    self._file.write(json.dumps({"step": step, **values}) + "\n")
    self._file.flush()
    return values

  def count_step(self) -> None:
    self._window_steps += 1

  def progress(self, step: int, values: dict) -> None:
    """The console line and TensorBoard scalars (process 0); restarts the rate window."""
    if self.is_main:
      elapsed = time.perf_counter() - self._window_start
      rate = self._window_steps / max(elapsed, 1e-9)
      eta = (self.total_steps - step) / max(rate, 1e-9)
      parts = [f"step {step}/{self.total_steps}"]
      parts += [f"{key} {values[key]:.4f}" for key in self.shown if key in values]
      scalars = dict(values)
      if self.schedule is not None:
        scalars["lr"] = float(self.schedule(step))
        parts.append(f"lr {scalars['lr']:.2e}")
      parts += [f"{rate:.2f} steps/s", f"ETA {format_seconds(eta)}"]
      print("  ".join(parts), flush=True)
      scalars["steps_per_s"] = rate
      self.scalars(step, scalars, prefix="train")
    self._window_start, self._window_steps = time.perf_counter(), 0

  def samples(self, step: int, video) -> None:
    """Generated clips (uint8 [B, F, H, W, 3]) to TensorBoard as `samples/frames` and
    `samples/video` (process 0)."""
    if self.writer is not None:
      tensorboard.write_video_samples(self.writer, "samples", video, step)

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside (generating samples, say) is not training time: it is left out of
    the steps/s and ETA of the next progress line."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self._window_start += time.perf_counter() - start

  def scalars(self, step: int, values: dict, prefix: str) -> None:
    if self.writer is not None:
      for key, value in values.items():
        self.writer.add_scalar(f"{prefix}/{key}", value, step)
      self.writer.flush()

  def close(self) -> None:
    self._file.close()
    if self.writer is not None:
      self.writer.close()
