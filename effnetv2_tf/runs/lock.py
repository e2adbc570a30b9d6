"""One writer per run directory: a lock file that names its holder.

A run that writes a run directory holds it through `<dir>/.lock`, a small
JSON file with the holder's host, pid, start time and command, created with
O_CREAT|O_EXCL so that of two runs started together exactly one gets it. A
second writer stops with one line naming the holder. A lock whose process
is gone (same host, pid not running, e.g. after `kill -9`) is taken over,
so a crash never blocks the resume; a lock from another host cannot be
checked from here, so the message names the file to delete.

On gs:// (or any `scheme://`) tf.io.gfile has no exclusive create: the
lock is checked, written and read back, which catches a second run unless
both start within the same moment.
"""

import contextlib
import datetime
import json
import os
import shlex
import socket
import sys
import time
import uuid

from absl import logging
import tensorflow as tf

from effnetv2_tf.runs import run_dir

LOCK_FILENAME = ".lock"
# How long a reader waits for a just-created lock file's content.
_WRITE_GRACE_S = 1.0


class RunDirLockedError(run_dir.RunDirError):
  """Another run writes the directory; the message names it."""


def _process_identity(pid):
  """'<boot id>:<start tick>' of process `pid` (Linux /proc), or None.

  A pid alone can be reused after its process ended (in a restarted
  container the same pid is likely); with this a live pid that started
  after the lock was written is known not to be its holder.
  """
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      boot = f.read().strip()
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
  except OSError:
    return None
  # Field 22, counted after the ")" that ends the (free-form) name.
  return f"{boot}:{stat.rpartition(')')[2].split()[19]}"


def this_process():
  """The lock file's content for this process (a dict)."""
  return {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "process": _process_identity(os.getpid()),
      "started": datetime.datetime.now().astimezone().isoformat(
          timespec="seconds"),
      "command": shlex.join(sys.argv),
      "token": uuid.uuid4().hex,  # tells this lock from a successor's
  }


def _running(holder):
  """Whether `holder` (a lock's dict) runs: True, False, or None where
  this host cannot tell (another host's process)."""
  if holder.get("host") != socket.gethostname():
    return None
  pid = holder.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except (ProcessLookupError, OverflowError):
    return False
  except PermissionError:
    pass  # another user's live process
  identity = holder.get("process")
  now = _process_identity(pid)
  return identity is None or now is None or identity == now


def _since(holder):
  """When the holder started: 'HH:MM' today, else the date too."""
  try:
    started = datetime.datetime.fromisoformat(holder["started"]).astimezone()
  except (KeyError, TypeError, ValueError):
    return "an unknown time"
  same_day = started.date() == datetime.datetime.now().astimezone().date()
  return started.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M")


def _program(holder):
  """The holder's program (its command's first word), e.g. main.py."""
  words = shlex.split(holder.get("command") or "") or ["?"]
  return os.path.basename(words[0])


def _read(path):
  """The lock at `path` as a dict; None when there is none; {} when its
  content is not a lock (still being written, or not ours)."""
  deadline = time.monotonic() + _WRITE_GRACE_S
  while True:
    try:
      with tf.io.gfile.GFile(path) as f:
        holder = json.loads(f.read())
      if isinstance(holder, dict) and "pid" in holder:
        return holder
    except tf.errors.NotFoundError:
      return None
    except (ValueError, tf.errors.OpError):
      pass
    if time.monotonic() > deadline:
      return {}
    time.sleep(0.05)


def _create_exclusive(path, text):
  """Creates `path` holding `text` unless it exists; whether it did."""
  if "://" in path:  # no exclusive create: check, write, read back
    if tf.io.gfile.exists(path):
      return False
    with tf.io.gfile.GFile(path, "w") as f:
      f.write(text)
    with tf.io.gfile.GFile(path) as f:
      return f.read() == text
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
  except OSError:
    os.remove(path)
    raise
  return True


def _take_over(path, stale):
  """Removes the lock at `path` if it is still `stale`; whether it did.

  Locally the file is first renamed aside, so of two successors only one
  removes it; a successor's new lock moved aside by mistake goes back.
  """
  if "://" in path:
    try:
      tf.io.gfile.remove(path)
    except tf.errors.NotFoundError:
      return False
    return True
  aside = f"{path}.{os.getpid()}.stale"
  try:
    os.rename(path, aside)
  except FileNotFoundError:
    return False
  if _read(aside) != stale:
    os.rename(aside, path)
    return False
  os.remove(aside)
  return True


def _made_dirs(path):
  """Creates local directory `path`; returns the directories it made,
  deepest first (removed again when the run leaves nothing there)."""
  if "://" in path:
    return []
  made = []
  path = os.path.abspath(path)
  while not os.path.isdir(path):
    made.append(path)
    path = os.path.dirname(path)
  if made:
    os.makedirs(made[0], exist_ok=True)
  return made


class RunDirLock:
  """The held lock of `directory`; `release` removes it."""

  def __init__(self, directory, holder, made_dirs):
    self.directory = directory
    self.path = os.path.join(directory, LOCK_FILENAME)
    self.holder = holder
    self._made_dirs = made_dirs

  def release(self):
    """Removes the lock file if it is still this run's, and the
    directories `acquire` made if nothing else is in them; never raises
    (it runs while another error may be on its way out)."""
    try:
      current = _read(self.path)
      if current and current.get("token") == self.holder["token"]:
        tf.io.gfile.remove(self.path)
      elif current is not None:
        logging.warning("%s is no longer this run's lock; left as is.",
                        self.path)
    except (OSError, tf.errors.OpError) as err:
      logging.warning("Could not remove the lock %s: %s", self.path, err)
    _remove_empty(self._made_dirs)


def _remove_empty(dirs):
  """Removes `dirs` (deepest first) while they are empty."""
  for path in dirs:
    try:
      os.rmdir(path)
    except OSError:
      return


def _in_use(directory, flag, holder):
  return (f"{flag} {directory} is in use by pid {holder.get('pid')} on host "
          f"{holder.get('host')} since {_since(holder)} ({_program(holder)}); "
          f"wait for it or use another {flag}")


def acquire(directory, flag="--model_dir", note=print):
  """Takes the lock of run directory `directory` (made if missing).

  Args:
    directory: the run directory.
    flag: the flag that named it, for the messages.
    note: takes the one line said when a dead run's lock is taken over.

  Returns:
    The held `RunDirLock`.

  Raises:
    RunDirLockedError: another live run, or another host's run, holds it.
  """
  path = os.path.join(directory, LOCK_FILENAME)
  made = _made_dirs(directory)
  holder = this_process()
  try:
    for _ in range(5):  # again after a lock released or taken over meanwhile
      try:
        created = _create_exclusive(path, json.dumps(holder, indent=2))
      except (OSError, tf.errors.OpError) as err:
        raise run_dir.RunDirError(
            f"{flag} {directory}: cannot write its lock file {path}: "
            f"{getattr(err, 'strerror', None) or err}.") from None
      if created:
        return RunDirLock(directory, holder, made)
      held = _read(path)
      if held is None:
        continue
      if not held:
        raise RunDirLockedError(
            f"{flag} {directory} is locked by {path}, which does not say "
            "by whom; if no run writes there, delete it.")
      running = _running(held)
      if running:
        raise RunDirLockedError(_in_use(directory, flag, held) + ".")
      if running is None:
        raise RunDirLockedError(
            f"{_in_use(directory, flag, held)}; this host cannot tell "
            f"whether it still runs: if not, delete {path}.")
      if _take_over(path, held):
        note(f"{flag} {directory}: took over the lock of pid "
             f"{held.get('pid')} ({_program(held)}, since {_since(held)}), "
             "which is no longer running.")
    raise RunDirLockedError(f"{flag} {directory}: other runs keep taking "
                            f"its lock ({path}); use another {flag}.")
  except BaseException:
    _remove_empty(made)
    raise


@contextlib.contextmanager
def hold(directory, flag="--model_dir", note=print):
  """Holds `directory`'s lock for the block (`acquire`, then `release`
  on any way out: return, error, KeyboardInterrupt, sys.exit)."""
  lock = acquire(directory, flag, note)
  try:
    yield lock
  finally:
    lock.release()
