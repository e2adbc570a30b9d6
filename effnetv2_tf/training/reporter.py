"""Where the trainer's status lines go: printed, or kept without printing.

The trainer and its loops hand every line they report (stage plans, step
progress, evaluations, notes) to a reporter, an object with one method,
`line(text)`. The drivers print them (`Printer`, also the default, so a
library user sees progress, as Keras' verbose default); a search trial
keeps them (`Recorder`) in memory and in its log file, stdout untouched.
"""


class Printer:
  """Prints each line to stdout, flushed at once."""

  def line(self, text):
    print(text, flush=True)


class Recorder:
  """Keeps each line in `lines` and, given `stream`, writes it there."""

  def __init__(self, stream=None):
    self.lines = []
    self.stream = stream

  def line(self, text):
    self.lines.append(text)
    if self.stream is not None:
      self.stream.write(text + "\n")
      self.stream.flush()
