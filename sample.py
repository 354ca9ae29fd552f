"""Samples PIDM: ``python sample.py --checkpoint=ckpt/ --source=a.jpg --pose=p.json --out=out/``.

The command lives in ``pidm_jax/sample_cli.py`` (also installed as ``pidm-sample``).
"""

from pidm_jax.sample_cli import run

if __name__ == "__main__":
  run()
