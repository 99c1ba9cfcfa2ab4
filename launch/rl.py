"""On-policy RL of a diffusion coder from verifier rewards, or (config.rl.mode='order_distill')
constrained-order trajectory distillation on reference answers (docs/rl.md).

    python launch/rl.py --config configs/rl_tiny.py
    python launch/rl.py --config configs/rl_tiny.py:runlocal --config.model.checkpoint=runs/sft_synthetic_runlocal
    python launch/rl.py --config configs/rl_qwen3_coder_30b_a3b.py --config.model.checkpoint=/ckpt/coder30b-sft
    python launch/rl.py --config configs/order_distill_tiny.py

Re-running with the same workdir resumes after the newest readable checkpoint, exactly;
SIGTERM / SIGINT save after the current batch, then exit. Tensorboard logs are in <workdir>/tb,
every sample with its reward in <workdir>/rl_samples.jsonl. An unknown key or a bad value is
refused by name (exit code 2).
"""
from __future__ import annotations

import logging

from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxdiff.config import cli

PROG = "launch/rl.py"
_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/rl_*.py)", lock_config=True)


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it renames at INFO
    c = _CONFIG.value
    if c is None:
        cli.refuse(PROG, "--config is required, e.g. --config configs/rl_tiny.py")
    from jaxdiff.config import ConfigValueError
    from jaxdiff.rl.loop import train_rl
    from jaxdiff.rl.order_distill import train_order_distill

    distill = c.rl.mode == "order_distill"
    try:
        out = (train_order_distill if distill else train_rl)(c)
    except ConfigValueError as e:
        cli.refuse(PROG, str(e))
    if out["stopped"]:
        print(f"stopped by {out['stopped']} after batch {out['batch']}; checkpoint saved in {c.workdir}/checkpoints")
        return
    if not out["history"]:
        print(f"nothing to do: {c.workdir} has already run {out['batch']} of config.rl.batches={c.rl.batches}")
        return
    last = out["history"][-1]
    if distill:
        print(f"batch {out['batch']}: loss {last['distill/loss']:.3f}, log-likelihood of an order kept "
              f"{last['orders/loglik_kept']:.2f}, all {last['orders/loglik_all']:.2f}; tensorboard: {c.workdir}/tb")
        return
    print(f"batch {out['batch']}: reward {last['reward/total']:.3f}, pass rate {last['rollout/pass_rate']:.3f}, "
          f"steps used {last['rollout/steps_used']:.1f}, tokens per forward {last['rollout/tokens_per_forward']:.2f}, "
          f"device idle {last['time/device_idle_fraction']:.2f}; tensorboard: {c.workdir}/tb")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser(PROG))
