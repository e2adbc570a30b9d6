"""User errors and the one way every entry point reports them.

An error that a user caused and can fix (a bad flag, config value, path or
data) is a `UserError` whose message names the input and what to do. Entry
points run under `reported(prog)`: a user error becomes one line
`prog: error: message` on stderr and exit status 1; any other exception is
a bug and keeps its traceback. Each error class also derives from the
built-in error it used to be (ValueError, OSError, ...), so callers that
catch those still do.
"""

import contextlib
import sys

from absl import logging


class UserError(Exception):
  """An error a user caused and can fix; the message says which input."""


class MissingInputError(UserError, FileNotFoundError):
  """A file, directory or checkpoint the user named is not there."""


class ConfigError(UserError, ValueError):
  """A bad config key or value; the message names the key."""


def first_few(names, shown=3):
  """`names` for a one-line message: all of them up to `shown`, else the
  first `shown` and how many more ("a, b, c and 4 more")."""
  names = list(names)
  more = len(names) - shown
  return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def report(prog, message):
  """Prints `prog: error: message` on stderr (an error the run goes on
  after, e.g. one bad image of several)."""
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


def fail(prog, message):
  """Prints `prog: error: message` on stderr and exits 1."""
  report(prog, message)
  sys.exit(1)


@contextlib.contextmanager
def reported(prog):
  """Turns a `UserError` raised inside into `fail(prog, ...)`."""
  try:
    yield
  except UserError as err:
    logging.debug("Failure details", exc_info=True)
    fail(prog, str(err))
