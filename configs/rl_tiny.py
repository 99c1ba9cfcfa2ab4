"""On-policy RL of the main job's tiny coder from its SFT run: a fresh diffusion-head adapter (r=16)
over the frozen SFT model, trained on verifier rewards from the synthetic Python training split.

    python launch/rl.py --config configs/rl_tiny.py                      # from runs/sft_synthetic
    python launch/rl.py --config configs/rl_tiny.py --config.rl.batches=200 --config.workdir=runs/rl2
    python launch/rl.py --config configs/rl_tiny.py:runlocal --config.model.checkpoint=<a workdir>
    python launch/rl.py --config configs/rl_tiny.py:speed      # the speed reward, threshold decoding
    python launch/eval.py --config configs/eval.py --config.checkpoint=runs/rl_tiny \
        --config.suite=synthetic-heldout-constants --config.gen_length=40 --config.block_length=40

`model.checkpoint` is the SFT run's workdir (configs/sft_synthetic.py: a full-training run, so the
whole model is read from it and frozen). The prompts are `synthetic-train-rl`: the training
templates with constants SFT never saw (the SFT rows are `synthetic-train-sft`), which is what the
held-out-constant split asks of the model. Rollouts sample as the SFT model was trained to answer:
40 answer tokens in one block, one token per step, low-confidence remasking, at temperature 1, with
Fast-dLLM's dual cache. The estimator is the coupled one (three forwards of the batch): on this
2-core CPU an update took ~4 s against ~40 s for the exact trace replay (shrink 1), whose 40 step
contexts each need a forward of the whole batch (docs/benchmarks.md).
`:runlocal` runs two batches of 4 prompts x 2 samples of 8 tokens in seconds with the exact replay
(no cache, shrink 1), from `configs/sft_synthetic.py:runlocal`'s workdir or any full-training
workdir given on the command line. Bend tasks join with
--config.rl.bend_suites=bend-synthetic-train-rl when `bend` is on PATH.
"""
from jaxdiff.config import defaults as base


def get_config(arg=None):
    if arg == "runlocal":
        return get_runlocal_config()
    if arg == "speed":
        return get_speed_config()
    if arg:
        raise ValueError(f"configs/rl_tiny.py: unknown variant {arg!r} (known: runlocal, speed)")
    c = base.get_config()
    c.workdir = "runs/rl_tiny"
    c.model.checkpoint = "runs/sft_synthetic"   # a full-training workdir: its trained model, frozen
    c.lora.full_training = False
    c.lora.diffusion = base.lora_head(rank=16, alpha=32.0)   # the RL adapter (B = 0 at the start)
    r = c.rl
    r.suites = "synthetic-train-rl"            # seen templates, constants SFT never saw
    r.prompt_length = 128                       # 197 of its 216 prompts (the longest: 222 tokens)
    r.prompts_per_batch, r.group_size = 8, 8
    r.batches = 100
    r.temperature = 1.0
    r.gen_length, r.block_length, r.steps = 40, 40, 40
    r.policy, r.attention, r.cache = "low_confidence", "bidirectional", "dual"
    r.estimator = "coupled"                     # DiffuCoder's complementary masks: 3 forwards per update
    r.mu = 1
    r.eps_low = r.eps_high = 0.2
    r.beta = 0.0
    r.baseline, r.scale = "mean", "none"
    r.reward.correctness, r.reward.speed, r.reward.efficiency = 1.0, 0.0, 0.0
    r.workers = 2
    r.checkpoint_every = 10
    c.optimizer.lr = 1e-3                       # 3e-3 with mu = 2 collapsed (docs/benchmarks.md)
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
    r.estimator, r.cache, r.shrink, r.mu = "trace_replay", "none", 1, 2   # exact replay: ratio 1 at first
    r.batches = 2
    r.gen_length, r.block_length, r.steps = 8, 8, 8
    r.checkpoint_every = 1
    r.log_samples = 2
    c.optimizer.warmup_steps, c.optimizer.total_steps = 0, r.batches * r.mu
    return c


def get_speed_config():
    """Seed Diffusion's speed reward: rollouts decode with threshold remasking (every token whose
    probability exceeds 0.9 is committed at once, so a more confident model needs fewer steps) and a
    passing sample earns 1 - steps / 40 on top of its correctness. Evaluate it the same way:
    launch/eval.py ... --config.policy=threshold:0.9 (mean steps on the tasks passed before and after)."""
    c = get_config(None)
    c.workdir = "runs/rl_tiny_speed"
    c.rl.policy = "threshold:0.9"
    c.rl.reward.speed = 1.0
    c.rl.batches = c.optimizer.total_steps = 40
    return c
