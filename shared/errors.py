"""Errors that mean "the user asked for something we cannot do" rather than "the code is broken".

The entry point (`shared.app`) turns any `UserError` into one line on stderr and exit code 2,
without a traceback. Raise them for bad configs, missing or malformed data, corrupt checkpoints,
diverging losses: anything the person running the command can fix.
"""


class UserError(Exception):
  """Base class: a problem with the input, not a bug. Message is shown as-is, on one line."""


class ConfigError(UserError):
  """Unknown field, wrong method, unknown variant, bad value."""


class DataError(UserError):
  """Unknown data set, missing file, wrong shape, label outside the classes, empty split."""


class CheckpointError(UserError):
  """A checkpoint that cannot be restored (corrupt, or saved by an incompatible config)."""


class DivergenceError(UserError):
  """A NaN or Inf loss: training stopped, the last good checkpoint kept."""
