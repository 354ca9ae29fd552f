"""The tree is formatted with pyink as configured in pyproject.toml (2-space Google style)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_tree_is_formatted_with_pyink():
  done = subprocess.run(
      [sys.executable, "-m", "pyink", "--check", "--diff", "."],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert (
      "No module named pyink" not in done.stderr
  ), "pyink is in the test extra: pip install -e '.[test]'"
  assert done.returncode == 0, (
      "not formatted; run `pyink .` in the repository root:\n"
      + done.stdout[-4000:]
      + done.stderr[-2000:]
  )
  assert "would be left unchanged" in done.stderr, done.stderr  # it did look at the files
