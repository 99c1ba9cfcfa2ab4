"""Constrained-order trajectory distillation (Seed Diffusion) of the main job's tiny coder from its
SFT run: per training example, 8 generation orders of its reference answer sampled by the model,
the 2 most likely kept, and a fresh diffusion-head adapter (r=16) over the frozen SFT model trained
on their trajectories (docs/rl.md, "Constrained-order trajectory distillation").

    python launch/rl.py --config configs/order_distill_tiny.py                 # from runs/sft_synthetic
    python launch/rl.py --config configs/order_distill_tiny.py --config.rl.order_temperature=0.5
    python launch/rl.py --config configs/order_distill_tiny.py:runlocal --config.model.checkpoint=<a workdir>
    python launch/eval.py --config configs/eval.py --config.checkpoint=runs/order_distill_tiny \
        --config.suite=synthetic-heldout-constants --config.gen_length=40 --config.block_length=40

`model.checkpoint` is the SFT run's workdir (configs/sft_synthetic.py), frozen. The orders follow the
sampler the SFT model is evaluated with: 40 answer tokens (answer + EOS, padded with EOS, as SFT
trains them) in one block, one token per step, at temperature 1; an order is drawn by Gumbel-top-k
over log p(true token) / order_temperature. `:runlocal` runs two batches of 4 examples x 2 orders of
16 tokens (two blocks of 8, two tokens per step) in seconds, from `configs/sft_synthetic.py:runlocal`'s
workdir or any full-training workdir given on the command line.
"""
from jaxdiff.config import defaults as base


def get_config(arg=None):
    if arg == "runlocal":
        return get_runlocal_config()
    if arg:
        raise ValueError(f"configs/order_distill_tiny.py: unknown variant {arg!r} (known: runlocal)")
    c = base.get_config()
    c.workdir = "runs/order_distill_tiny"
    c.model.checkpoint = "runs/sft_synthetic"   # a full-training workdir: its trained model, frozen
    c.lora.full_training = False
    c.lora.diffusion = base.lora_head(rank=16, alpha=32.0)   # the adapter trained (B = 0 at the start)
    r = c.rl
    r.mode = "order_distill"
    r.suites = "synthetic-train"                # the synthetic family's training split: reference answers
    r.prompt_length = 128
    r.prompts_per_batch = 4                     # examples per batch
    r.n_orders, r.keep_orders, r.order_temperature = 8, 2, 1.0
    r.temperature = 1.0
    r.gen_length, r.block_length, r.steps = 40, 40, 40
    r.attention = "bidirectional"
    r.shrink = 1                                # the update replays each kept order in its exact contexts
    r.batches = 100
    r.checkpoint_every = 10
    c.optimizer.lr = 5e-4
    c.optimizer.warmup_steps = 0
    c.optimizer.decay = "constant"
    c.optimizer.weight_decay = 0.0
    c.optimizer.total_steps = r.batches         # one update per batch
    return c


def get_runlocal_config():
    """Seconds long: 2 batches of 4 examples x 2 orders (1 kept) of 16 tokens, 2 blocks, 2 tokens a step."""
    c = get_config(None)
    c.workdir = "runs/order_distill_tiny_runlocal"
    c.model.checkpoint = "runs/sft_synthetic_runlocal"
    r = c.rl
    r.prompt_length = 0
    r.n_orders, r.keep_orders = 2, 1
    r.batches = 2
    r.gen_length, r.block_length, r.steps = 16, 8, 8
    r.checkpoint_every = 1
    c.optimizer.total_steps = r.batches
    return c
