"""Drops the C++ log lines that TensorFlow's import prints below the log level.

`import tensorflow` loads two shared libraries that each print, before absl
logging is initialised, "WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR" and INFO lines (the
oneDNN notice): four lines that `TF_CPP_MIN_LOG_LEVEL` does not stop (absl
prints below-threshold messages before InitializeLog: abseil/abseil-cpp#1718
and #1957, tensorflow/tensorflow#102212). No environment variable does, so
a program's start-up (`effnetv2_tf/startup.py`) imports TensorFlow inside
`filtered_import()`, which sends file descriptor 2 through a forked filter
process for that import only:

  * a glog-style line (`I0000 00:00:1796237450.668119  5305 port.cc:153] ...`) is
    dropped when its level (I, W, E, F = 0..3) is below
    `TF_CPP_MIN_LOG_LEVEL` (the drivers set 2), together with the banner
    line and the CPU-instructions notice's second line;
  * every other byte passes, in order.

The filter is a separate process, so what a crash during the import prints
(libtpu's abort message, a fatal error) still reaches the terminal: the
filter reads to the end of the pipe after the importing process is gone.
`startup.start()` does it, before anything else imports TensorFlow;
`EFFNETV2_TF_SHOW_TF_START=1`, `TF_CPP_MIN_LOG_LEVEL` unset or 0, a
platform without `fork` or a process with threads leave stderr as it is.
`import effnetv2_tf` does none of it. This module imports no TensorFlow.
"""

import contextlib
import os
import re
import sys
import threading

SHOW_ENV = "EFFNETV2_TF_SHOW_TF_START"
BANNER = ("WARNING: All log messages before absl::InitializeLog() is called "
          "are written to STDERR")
# glog's prefix: level letter, MMDD, time, thread id, file:line].
# Before InitializeLog the time is hh:mm:<seconds since the epoch>.
_GLOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_LEVELS = "IWEF"
# The second line of cpu_feature_guard's INFO message.
_CONTINUATION = "To enable the following instructions:"


def min_level():
  """TF_CPP_MIN_LOG_LEVEL as an int (0 when unset or not a number)."""
  try:
    return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
  except ValueError:
    return 0


def keep(line, level):
  """Whether `line` (without its newline) passes at minimum level `level`."""
  if level <= 0:
    return True
  if line == BANNER:
    return False
  match = _GLOG.match(line)
  if match:
    return _LEVELS.index(match.group(1)) >= level
  return not line.startswith(_CONTINUATION)


def _filter(read_fd, write_fd, level):
  """The filter process: copies `read_fd` to `write_fd` line by line."""
  pending = b""
  while True:
    chunk = os.read(read_fd, 65536)
    if not chunk:
      break
    pending += chunk
    *lines, pending = pending.split(b"\n")
    out = b"".join(line + b"\n" for line in lines
                   if keep(line.decode("utf-8", "replace"), level))
    if out:
      os.write(write_fd, out)
  if pending and keep(pending.decode("utf-8", "replace"), level):
    os.write(write_fd, pending)


@contextlib.contextmanager
def filtered_import():
  """Runs its block (`import tensorflow`) with stderr filtered by `keep`."""
  level = min_level()
  # Forks only a single-threaded process (a script before TensorFlow), not
  # e.g. a notebook kernel, whose threads a fork would not carry.
  if (level <= 0 or os.environ.get(SHOW_ENV) == "1"
      or not hasattr(os, "fork") or "tensorflow" in sys.modules
      or threading.active_count() > 1):
    yield
    return
  sys.stderr.flush()
  read_fd, write_fd = os.pipe()
  pid = os.fork()
  if pid == 0:  # the filter: reads until every writer has closed the pipe
    os.close(write_fd)
    try:
      _filter(read_fd, 2, level)
    finally:
      os._exit(0)  # pylint: disable=protected-access
  os.close(read_fd)
  saved = os.dup(2)
  os.dup2(write_fd, 2)
  os.close(write_fd)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)  # closes the pipe's last writer: the filter ends
    os.close(saved)
    os.waitpid(pid, 0)


def quiet_info_logs(flag_values):
  """absl INFO lines (ours and TensorFlow's Python logger's: saver timings,
  strategy details) only when the command line gives --verbosity, so a
  command's output is what a user follows. Call it at the top of an absl
  `main`."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  try:
    given = flag_values["verbosity"].present
  except (KeyError, TypeError, AttributeError):
    given = False
  if not given:
    logging.set_verbosity(logging.WARNING)
