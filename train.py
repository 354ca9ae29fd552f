"""Trains PIDM: ``python train.py --config=configs/small.py --workdir=runs/demo [--config.x=y]``.

The command lives in ``pidm_jax/train_cli.py`` (also installed as ``pidm-train``).
"""

from pidm_jax.train_cli import run

if __name__ == "__main__":
  run()
