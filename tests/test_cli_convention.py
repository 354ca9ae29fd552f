"""Every command-line tool follows one convention: absl flags, --helpfull answers, a flag the user
got wrong (an unknown --config.x among them) is one line ``error: ...`` with status 2."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")

# (command, a flag its --helpfull lists, arguments that are right apart from a bad flag)
COMMANDS = [
    (["train.py"], "--workdir", [f"--config={TINY}", "--workdir=unused", "--config.nonsense=1"]),
    (["sample.py"], "--pose_frame", [f"--config={TINY}", "--config.sample.nonsense=1"]),
    (
        ["-m", "pidm_jax.generate"],
        "--source_swap_pairs",
        [f"--config={TINY}", "--checkpoint=x", "--out=y", "--config.model.nonsense=1"],
    ),
    (
        ["-m", "pidm_jax.convert"],
        "--to_torch",
        ["--checkpoint=x", "--output=y", f"--config={TINY}", "--config.nonsense=1"],
    ),
    (
        ["-m", "pidm_jax.evaluate"],
        "--ground_truth",
        ["--generated=x", "--ground_truth=y", "--nonsense=1"],
    ),
    (["-m", "input_pipeline.build"], "--manual_dir", ["--dataset=x", "--nonsense=1"]),
    (["-m", "pidm_jax.keypoints"], "--overlay", ["photo.jpg", "--out=y", "--nonsense=1"]),
]


def _run(args):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )


@pytest.mark.parametrize("command, listed, bad", COMMANDS, ids=[c[-1] for c, _, _ in COMMANDS])
def test_help_and_bad_flags(command, listed, bad):
  helped = _run(command + ["--helpfull"])
  # absl's own --helpfull exits with status 1 by design; the in-process tools exit 0
  assert helped.returncode in (0, 1), helped.stderr[-2000:]
  assert listed in helped.stdout + helped.stderr
  refused = _run(command + bad)
  assert refused.returncode == 2, (refused.stdout[-1000:], refused.stderr[-2000:])
  lines = refused.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "nonsense" in lines[0], lines


def test_flagfile_works_for_the_absl_tools(tmp_path):
  flagfile = tmp_path / "bad.flags"
  flagfile.write_text(f"--config={TINY}\n--workdir={tmp_path / 'w'}\n--config.train.nonsense=2\n")
  refused = _run(["train.py", f"--flagfile={flagfile}"])
  assert refused.returncode == 2 and "nonsense" in refused.stderr, refused.stderr[-2000:]
  assert not (tmp_path / "w").exists()
