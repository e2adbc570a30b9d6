"""Stopping cleanly on SIGTERM (preemption) and SIGINT (Ctrl-C).

Spot VMs and Cloud TPUs are preempted with a SIGTERM and a short grace
period; people stop runs with Ctrl-C. `watching` (a driver's whole run)
installs one handler for both, in the main thread only, and restores the
previous handlers after. Inside `deferred` blocks (training, evaluation) a
signal only records itself: the loops poll `requested` between device
calls, finish the current call, save and raise `Interrupted`. Elsewhere
(building the data and model, the export) the handler raises `Interrupted`
at once. Once a signal is recorded, further ones are ignored, so a second
Ctrl-C never cuts a save short. Without `watching` (the library, a
search trial) nothing changes.
"""

import contextlib
import signal
import threading

from effnetv2_tf import errors

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(errors.UserError):
  """A signal stopped the run; the message is the line that says where.

  `status` is the exit status a shell gives a process the signal ended:
  128 + its number (143 SIGTERM, 130 SIGINT), which the drivers exit with
  (not `errors.reported`'s 1).
  """

  def __init__(self, signum, message):
    super().__init__(message)
    self.signum = signum
    self.status = 128 + signum


def signal_name(signum):
  return signal.Signals(signum).name


class _State:
  """What the handler knows: the signal received, where the run is."""

  def __init__(self, where=""):
    self.signum = None  # the first signal received, if any
    self.deferring = 0  # depth of `deferred` blocks
    self.where = where  # ends an immediate stop's line ("before ...")
    self.installed = False  # by `watching`, in the main thread


_state = _State()


def _handle(signum, frame):
  del frame
  if _state.signum is not None:
    return  # stopping already: a second signal waits for the first's save
  _state.signum = signum
  if not _state.deferring:
    raise Interrupted(signum,
                      f"Interrupted ({signal_name(signum)}) {_state.where}")


@contextlib.contextmanager
def watching(where):
  """Within the block, SIGTERM and SIGINT stop the run without a traceback.

  `where` ends the line of a signal outside `deferred` blocks, e.g.
  "before training started: nothing was saved." (`set_where` changes it).
  Outside the main thread, where Python runs no handlers, this does
  nothing.
  """
  global _state
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  outer = _state
  previous = {s: signal.getsignal(s) for s in SIGNALS}
  _state = _State(where)
  _state.installed = True
  for s in SIGNALS:
    signal.signal(s, _handle)
  try:
    yield
  finally:
    for s, handler in previous.items():
      # None: a handler installed outside Python, which cannot be put back.
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    _state = outer


def reinstall():
  """Installs the handlers again inside `watching`: TensorFlow's
  coordination service (MultiWorkerMirroredStrategy) puts its own SIGTERM
  notifier in their place when it starts, which only logs the signal."""
  if _state.installed:
    for s in SIGNALS:
      signal.signal(s, _handle)


def set_where(where):
  """The end of an immediate stop's line from now on (see `watching`)."""
  _state.where = where


@contextlib.contextmanager
def deferred():
  """Within the block a signal only sets `requested`, for the loops to poll
  between device calls.

  Leaving the outermost block normally with a signal no poll acted on
  raises `Interrupted` (with the `watching` line's end).
  """
  state = _state
  state.deferring += 1
  try:
    yield
  finally:
    state.deferring -= 1
  if not state.deferring and state.signum is not None:
    raise Interrupted(state.signum, f"Interrupted "
                      f"({signal_name(state.signum)}) {state.where}")


def requested():
  """The number of the signal that asked the run to stop, or None."""
  return _state.signum


def ignore_further():
  """Ignores SIGTERM and SIGINT from now on (a process that is exiting)."""
  if threading.current_thread() is threading.main_thread():
    for s in SIGNALS:
      signal.signal(s, signal.SIG_IGN)
