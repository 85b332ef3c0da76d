"""The tree is ruff-clean (the same check as `make lint`)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check_is_clean():
  ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
  if ruff is None:
    pytest.fail("ruff is not installed: install the test extra, `pip install -e '.[test]'`")
  proc = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
