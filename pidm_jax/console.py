"""What the command-line tools print, and how they start: one convention for every entry point.

* ``say``: the project's own progress and results, to stdout, from process 0 only, flushed (so a
  log file or a pipe sees each line when it happens).
* ``quiet_third_party``: third-party INFO logging (Orbax, TFDS, grain, absl internals, JAX) is off
  unless the user asked for it with absl's ``--verbosity`` / ``-v`` flag (``-v 0`` shows INFO
  again); warnings and errors stay on stderr.
* ``initialize_distributed``: ``jax.distributed.initialize()`` when the environment describes a
  multi-process run (TPU pod, SLURM, Open MPI, an explicit coordinator), one test for every tool.
* ``Progress``: the training progress line, its rate and ETA measured after compilation and
  without the pauses for checkpoints and sampling.
* ``TensorBoardWriter``: the same run's figures, grids and text as TensorBoard event files
  (tensorboardX: clu's metric writers would import TensorFlow).
"""

from __future__ import annotations

import logging as py_logging
import os
import sys
import time

# Environment variables that mean "this process is one of several" (jax.distributed reads them).
MULTI_PROCESS_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
)
# Python loggers of the libraries whose INFO lines are not for the user.
THIRD_PARTY_LOGGERS = ("absl", "orbax", "jax", "jax._src", "tensorflow_datasets", "grain", "etils")


def say(message: str) -> None:
  """Prints one line of the project's own output to stdout (process 0 of a multi-process run)."""
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_index() == 0:
    print(message, flush=True)


def verbosity_requested() -> bool:
  """Whether absl's ``--verbosity`` (``-v``) was given on the command line."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    return bool(flags.FLAGS["verbosity"].present)
  except (KeyError, flags.UnparsedFlagAccessError):
    return False


def quiet_third_party() -> None:
  """Third-party INFO off (WARNING and above stay), unless ``--verbosity`` was given."""
  if verbosity_requested():
    return
  from absl import logging  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  for name in THIRD_PARTY_LOGGERS:
    py_logging.getLogger(name).setLevel(py_logging.WARNING)


def is_multi_process_environment(environ=None) -> bool:
  environ = os.environ if environ is None else environ
  return any(k in environ for k in MULTI_PROCESS_ENV)


def initialize_distributed(force: bool = False) -> bool:
  """Calls ``jax.distributed.initialize()`` for a multi-process run; returns whether it did."""
  if not (force or is_multi_process_environment()):
    return False
  import jax  # pylint: disable=g-import-not-at-top

  jax.distributed.initialize()
  return True


_NO_CONFIG = object()


def begin(
    argv, *, config=_NO_CONFIG, multihost: bool = False, cache_dir: str | None = None
) -> None:
  """The common start of a tool's ``main(argv)``: no stray arguments; for a sampling tool
  (``config`` given) a config, which is the checkpoint's stored one unless ``--config`` was
  given; third-party INFO logging off (``quiet_third_party``); the persistent compilation cache
  (``use_compilation_cache(cache_dir)``); the multi-process start (``multihost`` forces it)."""
  quiet_third_party()
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  if config is None:
    fail("no config: give --checkpoint (its stored config is used) or --config")
  use_compilation_cache(cache_dir)
  initialize_distributed(force=multihost)


def default_cache_dir() -> str:
  """Where compiled programs are kept between runs when a tool names no directory:
  ``$XDG_CACHE_HOME/pidm_jax/jax`` (``~/.cache/pidm_jax/jax`` by default)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "pidm_jax", "jax")


def use_compilation_cache(directory: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache, so that a second run of a tool loads its
  compiled programs instead of compiling them again. The directory is ``$JAX_COMPILATION_CACHE_DIR``
  when set (an empty value turns the cache off), else ``directory``, else ``default_cache_dir()``.
  Returns the directory used, or None when off."""
  import jax  # pylint: disable=g-import-not-at-top

  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    directory = os.environ["JAX_COMPILATION_CACHE_DIR"] or None
  elif directory is None:
    directory = default_cache_dir()
  if directory is not None:
    jax.config.update("jax_compilation_cache_dir", directory)
    # Every program, also the small ones (JAX's default keeps only those that took a second to
    # compile): drawing a model's parameters op by op compiles hundreds of small programs, 12 s
    # for the paper's model, 2 s once they are kept. The user's own setting wins.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return directory


def config_file(name: str) -> str:
  """The path of ``configs/<name>.py`` of the installed ``configs`` package."""
  import configs  # pylint: disable=g-import-not-at-top

  return os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), f"{name}.py")


def stored_config_path() -> str:
  """``configs/stored.py``: the config stored with a checkpoint, as a config file."""
  return config_file("stored")


def default_to_stored_config(argv: list[str]) -> list[str]:
  """``argv`` with ``--config=configs/stored.py:<checkpoint>`` inserted first when it gives a
  ``--checkpoint`` but no ``--config``: the checkpoint's own config becomes the default, and
  ``--config.sample.*`` and other overrides apply on top of it. (Inserted first, so that a
  ``--config`` from a ``--flagfile`` still wins.)"""
  checkpoint = None
  for i, arg in enumerate(argv[1:], start=1):
    if arg == "--config" or arg.startswith("--config="):
      return list(argv)
    if arg.startswith("--checkpoint="):
      checkpoint = arg.split("=", 1)[1]
    elif arg == "--checkpoint" and i + 1 < len(argv):
      checkpoint = argv[i + 1]
  if not checkpoint:
    return list(argv)
  return [argv[0], f"--config={stored_config_path()}:{checkpoint}"] + list(argv[1:])


def fail(message, status: int = 2, keep_lines: bool = False):
  """Ends the program on a user error: one line ``error: ...`` on stderr, exit ``status``.

  With ``keep_lines`` a message of several lines (a list of differing fields, say) keeps them,
  the first after ``error: ``; otherwise all whitespace runs become one space.
  """
  text = str(message)
  text = text.strip() if keep_lines else " ".join(text.split())
  print("error: " + text, file=sys.stderr, flush=True)
  sys.exit(status)


def parse_flags(argv, flag_values=None):
  """Parses ``argv`` into absl flags; a flag the user got wrong (unknown, e.g. ``--config.x``,
  or an invalid value) ends the program with one line ``error: ...`` and status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flag_values = flags.FLAGS if flag_values is None else flag_values
  try:
    return flag_values(argv)
  except flags.Error as e:
    fail(e)
  except (AttributeError, KeyError) as e:  # config_flags: an override of a field that is not there
    given = [a for a in argv[1:] if a.startswith("--config.")]
    fail(f"a --config override names a field the config does not have ({e}): {' '.join(given)}")


HELP_FLAGS = ("--help", "-h", "--helpfull", "--helpshort", "-?")


def parse_own_flags(argv, define, usage: str):
  """absl flags of a tool that is also called in-process (``main(argv)``): ``define(flag_values)``
  defines them on a fresh ``FlagValues`` (so two tools never clash in one process), then ``argv``
  (without the program name) is parsed. ``--flagfile`` works as everywhere in absl; ``--help`` /
  ``--helpfull`` print ``usage`` and the flags and exit 0; a wrong flag exits as ``parse_flags``.
  Returns the FlagValues."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flag_values = flags.FlagValues()
  define(flag_values)
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in HELP_FLAGS for a in argv):
    print(usage.strip() + "\n\nflags:\n" + flag_values.get_help(), flush=True)
    sys.exit(0)
  saved = sys.argv
  sys.argv = [saved[0] if saved else "pidm"] + argv  # config_flags reads its overrides there
  try:
    rest = parse_flags(sys.argv, flag_values)
  finally:
    sys.argv = saved
  if len(rest) > 1:
    fail(f"unexpected arguments: {' '.join(rest[1:])}")
  return flag_values


def run(main, argv=None) -> None:
  """``absl.app.run(main)`` with ``parse_flags``: the entry of every command-line tool."""
  from absl import app  # pylint: disable=g-import-not-at-top

  app.run(main, argv=argv, flags_parser=parse_flags)


def hms(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """Rate and ETA of a loop of ``total`` steps, counting only time spent stepping.

  ``start(step)`` once the first step has run (its compilation is not part of any rate); time
  inside ``with progress.paused():`` (checkpoint saves, sampling) is left out too.
  """

  def __init__(self, total: int, clock=time.perf_counter):
    self.total = int(total)
    self._clock = clock
    self._t = self._step = None
    self._paused = 0.0

  def start(self, step: int) -> None:
    self._t, self._step, self._paused = self._clock(), int(step), 0.0

  @property
  def started(self) -> bool:
    return self._t is not None

  def paused(self):
    progress = self

    class _Pause:

      def __enter__(self):
        self.t0 = progress._clock()

      def __exit__(self, *exc):
        progress._paused += progress._clock() - self.t0
        return False

    return _Pause()

  def rate(self, step: int) -> float | None:
    """Steps per second since the last ``rate`` call (or ``start``), pauses excluded; restarts the
    interval. None before ``start`` or when no step was taken."""
    if self._t is None:
      return None
    now = self._clock()
    busy = now - self._t - self._paused
    steps = int(step) - self._step
    self._t, self._step, self._paused = now, int(step), 0.0
    if steps <= 0 or busy <= 0:
      return None
    return steps / busy

  def line(self, step: int, rate: float | None, **values: float) -> str:
    """``step 500/6000 loss 0.1234 ... 9.80 steps/s ETA 0:09:21`` (rate and ETA once known)."""
    width = len(str(self.total))
    parts = [f"step {step:>{width}d}/{self.total}"]
    parts += [f"{k} {v:.4f}" for k, v in values.items()]
    if rate:
      parts.append(f"{rate:.2f} steps/s ETA {hms((self.total - step) / rate)}")
    return " ".join(parts)


class TensorBoardWriter:
  """TensorBoard event files in ``<directory>`` (tensorboardX); made on process 0 only.

  Scalars without a ``/`` in their name are filed under ``train/``.
  """

  def __init__(self, directory: str):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

    self._w = SummaryWriter(directory)

  def scalars(self, step: int, values: dict) -> None:
    for k, v in values.items():
      self._w.add_scalar(k if "/" in k else f"train/{k}", v, step)
    self._w.flush()

  def image(self, step: int, tag: str, image) -> None:
    """An (H, W, 3) uint8 image."""
    self._w.add_image(tag, image, step, dataformats="HWC")

  def text(self, tag: str, text: str) -> None:
    self._w.add_text(tag, f"<pre>{text}</pre>", 0)

  def close(self) -> None:
    self._w.close()
