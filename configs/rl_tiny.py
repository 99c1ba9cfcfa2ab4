"""On-policy RL of the main job's tiny coder from its SFT run: a fresh diffusion-head adapter (r=16)
over the frozen SFT model, trained on verifier rewards from the synthetic Python training split.

    python launch/rl.py --config configs/rl_tiny.py                      # from runs/sft_synthetic
    python launch/rl.py --config configs/rl_tiny.py --config.rl.batches=200 --config.workdir=runs/rl2
    python launch/rl.py --config configs/rl_tiny.py:runlocal --config.model.checkpoint=<a workdir>
    python launch/eval.py --config configs/eval.py --config.checkpoint=runs/rl_tiny \
        --config.suite=synthetic-heldout-constants --config.gen_length=40 --config.block_length=40

`model.checkpoint` is the SFT run's workdir (configs/sft_synthetic.py: a full-training run, so the
whole model is read from it and frozen). Rollouts sample as the SFT model was trained to answer: 40
answer tokens in one block, one token per step, low-confidence remasking, at temperature 1.
`:runlocal` runs two batches of 4 prompts x 2 samples of 8 tokens in seconds, from
`configs/sft_synthetic.py:runlocal`'s workdir or any full-training workdir given on the command line.
Bend tasks join with --config.rl.bend_suites=bend-synthetic-train when `bend` is on PATH.
"""
from jaxdiff.config import defaults as base


def get_config(arg=None):
    if arg == "runlocal":
        return get_runlocal_config()
    if arg:
        raise ValueError(f"configs/rl_tiny.py: unknown variant {arg!r} (known: runlocal)")
    c = base.get_config()
    c.workdir = "runs/rl_tiny"
    c.model.checkpoint = "runs/sft_synthetic"   # a full-training workdir: its trained model, frozen
    c.lora.full_training = False
    c.lora.diffusion = base.lora_head(rank=16, alpha=32.0)   # the RL adapter (B = 0 at the start)
    r = c.rl
    r.suites = "synthetic-train"
    r.prompt_length = 128                       # 92% of the training split's prompts (the longest: 222)
    r.prompts_per_batch, r.group_size = 4, 8
    r.batches = 100
    r.temperature = 1.0
    r.gen_length, r.block_length, r.steps = 40, 40, 40
    r.policy, r.attention, r.cache = "low_confidence", "bidirectional", "none"
    r.estimator, r.shrink = "trace_replay", 4   # TraceRL's replay, 4 steps per forward (10 forwards, not 40)
    r.mu = 1
    r.eps_low = r.eps_high = 0.2
    r.beta = 0.0
    r.baseline, r.scale = "mean", "none"
    r.reward.correctness, r.reward.speed, r.reward.efficiency = 1.0, 0.0, 0.0
    r.workers = 2
    r.checkpoint_every = 10
    c.optimizer.lr = 5e-4
    c.optimizer.warmup_steps = 0                # a linear warm-up from 0 would spend whole batches at lr ~0
    c.optimizer.decay = "constant"
    c.optimizer.weight_decay = 0.0
    c.optimizer.total_steps = r.batches * r.mu
    return c


def get_runlocal_config():
    """Seconds long: 2 batches of 4 prompts x 2 samples of 8 tokens, 2 inner iterations each."""
    c = get_config(None)
    c.workdir = "runs/rl_tiny_runlocal"
    c.model.checkpoint = "runs/sft_synthetic_runlocal"
    r = c.rl
    r.prompt_length = 64
    r.prompts_per_batch, r.group_size = 4, 2
    r.shrink, r.mu = 1, 2                       # the exact replay: ratio 1 at the first iteration
    r.batches = 2
    r.gen_length, r.block_length, r.steps = 8, 8, 8
    r.checkpoint_every = 1
    r.log_samples = 2
    c.optimizer.warmup_steps, c.optimizer.total_steps = 0, r.batches * r.mu
    return c
