"""The one error path of every command: a `UserError` is one `error: ...` line and exit code 2.

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
      sys.exit(cli.guarded(main))

`shared.app` (the methods' entry point) and each report command use it, so a missing, foreign
or corrupt input reads the same everywhere.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from shared.errors import ConfigError, UserError

EXIT_USER_ERROR = 2


def one_line(message: object) -> str:
  """The message with its whitespace (newlines included) collapsed."""
  return " ".join(str(message).split())


def fail(message: object) -> NoReturn:
  """Prints `error: <message>` on one line to stderr and exits with code 2."""
  print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def guarded(main: Callable[..., int | None], *args, **kwargs) -> int:
  """`main(*args, **kwargs)`'s exit code (0 for None); a UserError is `fail`ed."""
  try:
    code = main(*args, **kwargs)
  except UserError as e:
    fail(e)
  return 0 if code is None else int(code)


def run_folders(
  argv: list[str] | None,
  usage: str,
  about: str,
  *,
  at_most: int | None = None,
  default: str | None = None,
) -> list[str] | None:
  """The run folders a report command was given, or None after printing its `--help`.

  `usage` is the one-line usage, `about` what the command prints; no folder is a ConfigError
  naming the usage unless `default` is given; more than `at_most` folders is one too.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ("-h", "--help") for a in argv):
    print(f"{usage}\n\n{about}")
    return None
  unknown = [a for a in argv if a.startswith("-")]
  if unknown:
    raise ConfigError(f"unknown option {unknown[0]!r}; {usage}")
  if not argv:
    if default is None:
      raise ConfigError(f"no run folder given; {usage}")
    argv = [default]
  if at_most is not None and len(argv) > at_most:
    raise ConfigError(f"{at_most} run folder(s) at most, got {len(argv)}; {usage}")
  return argv


HELP_FLAGS = ("-h", "--help", "--helpfull", "-?")


def printed_help(argv: list[str], usage: str, doc: str, flag_values, module: str) -> bool:
  """Prints usage, `doc` and `module`'s absl flags when argv asks for help; whether it did."""
  if not any(a in HELP_FLAGS for a in argv[1:]):
    return False
  print(f"{usage}\n\n{doc.strip()}\n\nflags:\n{flag_values.module_help(module)}")
  return True


def parse_config_flags(flag_values, argv: list[str]):
  """Parses absl flags with a `--config` (ml_collections config_flags); returns the config (None
  when not given). A bad flag, config file or override is a ConfigError (a UserError raised
  while loading the config is re-raised as itself)."""
  from absl import flags

  try:
    flag_values(argv)
    config = flag_values.config  # loaded (overrides applied) on first access
    if config is not None:
      config.to_json_best_effort()  # a lazily failed load raises here
  except flags.Error as e:
    raise ConfigError(str(e)) from None
  except Exception as e:  # ml_collections raises several types for a bad config file or override
    cause = e.__cause__ or e.__context__
    raise (cause if isinstance(cause, UserError) else ConfigError(str(e))) from None
  return config


class ArgumentParser(argparse.ArgumentParser):
  """argparse whose errors are a ConfigError: one `error: <message>; usage: ...` line and exit 2
  through `guarded` (argparse's own prints two lines)."""

  def error(self, message):
    raise ConfigError(f"{message}; {self.format_usage().strip()}")
