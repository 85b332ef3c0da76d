"""The one error path of every command: a `UserError` is one `error: ...` line and exit code 2.

    def main(argv=None) -> int: ...
    if __name__ == "__main__":
      sys.exit(cli.guarded(main))

`shared.app` (the methods' entry point) and each report command use it, so a missing, foreign
or corrupt input reads the same everywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from shared.errors import UserError

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
