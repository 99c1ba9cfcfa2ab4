"""Train a jaxdiff model.

    python launch/train.py --config configs/tiny_coder.py
    python launch/train.py --config configs/tiny_coder.py --config.train.steps=2000 --config.workdir=runs/t2
    python launch/train.py --config configs/qwen3_0_6b.py --config.model.checkpoint=/ckpt/q06b-jd

Config keys are documented in docs/configs.md; an unknown key or a bad value is refused by name.
Re-running with the same workdir resumes from the newest readable checkpoint.
"""
from __future__ import annotations

import logging

from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxdiff.config import cli

PROG = "launch/train.py"
_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/*.py)", lock_config=True)


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it renames at INFO
    c = _CONFIG.value
    if c is None:
        cli.refuse(PROG, "--config is required, e.g. --config configs/tiny_coder.py")
    from jaxdiff.parallel.distributed import initialize
    initialize()   # several processes (launch/local, SLURM, TPU pod): before any device is touched
    import jax

    from jaxdiff.config import ConfigValueError
    from jaxdiff.train.loop import summary_line, train

    try:
        out = train(c, progress=jax.process_index() == 0)
    except ConfigValueError as e:
        cli.refuse(PROG, str(e))
    lead = jax.process_index() == 0
    if out["stopped"]:
        if lead:
            print(f"stopped by {out['stopped']} at step {out['step']}; checkpoint saved in {c.workdir}/checkpoints")
        return
    if lead:
        print(summary_line(out))
        print(f"{out['sample_kind']} sample:\n" + out["sample"])


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser(PROG))
