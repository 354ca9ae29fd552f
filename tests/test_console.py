"""pidm_jax.console: the progress line's rate and ETA, the multi-process test, user errors."""

import logging

import pytest

from pidm_jax import console


class _Clock:

  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_rate_leaves_out_compilation_and_pauses():
  clock = _Clock()
  progress = console.Progress(1000, clock=clock)
  assert progress.rate(1) is None and not progress.started
  clock.t = 60.0  # the first step compiled for a minute
  progress.start(1)
  clock.t += 10.0  # 100 steps in 10 s
  with progress.paused():  # a checkpoint save
    clock.t += 30.0
  clock.t += 10.0  # 100 more steps in 10 s
  assert progress.rate(201) == pytest.approx(10.0)
  line = progress.line(201, 10.0, loss=0.5)
  assert line == "step  201/1000 loss 0.5000 10.00 steps/s ETA 0:01:20"
  clock.t += 4.0  # the next interval starts afresh
  assert progress.rate(241) == pytest.approx(10.0)
  assert progress.rate(241) is None  # no step taken
  assert progress.line(1, None, loss=1.0) == "step    1/1000 loss 1.0000"


def test_hms():
  assert console.hms(0) == "0:00:00"
  assert console.hms(3725.4) == "1:02:05"
  assert console.hms(-3) == "0:00:00"


def test_multi_process_environment():
  assert not console.is_multi_process_environment({"PATH": "/bin"})
  assert console.is_multi_process_environment({"SLURM_NTASKS": "4"})
  assert console.is_multi_process_environment({"TPU_WORKER_HOSTNAMES": "a,b"})


def test_third_party_info_is_quiet_by_default():
  from absl import logging as absl_logging

  before = absl_logging.get_verbosity()
  try:
    console.quiet_third_party()
    assert absl_logging.get_verbosity() == absl_logging.WARNING
    assert logging.getLogger("orbax").getEffectiveLevel() == logging.WARNING
  finally:
    absl_logging.set_verbosity(before)
    for name in console.THIRD_PARTY_LOGGERS:
      logging.getLogger(name).setLevel(logging.NOTSET)


def test_fail_is_one_line_and_status_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    console.fail("no such file:\n  /x/y.pt")
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: no such file: /x/y.pt\n"


def test_the_checkpoints_config_is_the_default():
  stored = console.stored_config_path()
  assert stored.endswith("configs/stored.py")
  assert console.default_to_stored_config(["s", "--checkpoint=ck", "--config.sample.steps=5"]) == [
      "s",
      f"--config={stored}:ck",
      "--checkpoint=ck",
      "--config.sample.steps=5",
  ]
  assert console.default_to_stored_config(["s", "--checkpoint", "ck"]) == [
      "s",
      f"--config={stored}:ck",
      "--checkpoint",
      "ck",
  ]
  given = ["s", "--config=configs/tiny.py", "--checkpoint=ck"]
  assert console.default_to_stored_config(given) == given
  assert console.default_to_stored_config(["s", "--source=a.jpg"]) == ["s", "--source=a.jpg"]


def test_stored_config_keeps_field_types(tmp_path):
  import json
  from configs import small, stored
  from pidm_jax import checkpointing

  config = small.get_config()
  (tmp_path / "config.json").write_text(json.dumps(checkpointing.config_to_json(config)))
  back = stored.get_config(str(tmp_path))
  assert checkpointing.config_mismatches(checkpointing.config_to_json(config), back) == []
  assert back.model.channel_mult == (1, 2, 4) and back.data.data_dir is None
  back.data.data_dir = "/data"  # an unset placeholder is still a str field
  with pytest.raises(ValueError, match="has no stored config"):
    stored.get_config(str(tmp_path / "nothing"))


def test_compilation_cache_directory_by_precedence(tmp_path, monkeypatch):
  import jax  # pylint: disable=import-outside-toplevel

  before = jax.config.jax_compilation_cache_dir
  before_min = jax.config.jax_persistent_cache_min_compile_time_secs
  try:
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    assert console.use_compilation_cache() == str(tmp_path / "xdg" / "pidm_jax" / "jax")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "pidm_jax" / "jax")
    # small programs are kept too (drawing parameters op by op compiles many), unless the user
    # set the threshold
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    console.use_compilation_cache()
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 2.0
    assert console.use_compilation_cache(str(tmp_path / "run")) == str(tmp_path / "run")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "run")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))  # the user's wins
    assert console.use_compilation_cache(str(tmp_path / "run")) == str(tmp_path / "env")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # empty: off, the setting left alone
    jax.config.update("jax_compilation_cache_dir", None)
    assert console.use_compilation_cache(str(tmp_path / "run")) is None
    assert jax.config.jax_compilation_cache_dir is None
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before_min)
