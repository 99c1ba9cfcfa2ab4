"""The main job, the whole loop, embedded (no download): pre-train the tiny coder on the standard
library's source -> export the SFT part of the synthetic Python training split -> SFT -> evaluate (greedy
pass@1 on both held-out splits) -> RL on verifier rewards -> evaluate again -> a before/after table.

    python launch/main.py --config configs/main_job.py
    python launch/main.py --config configs/main_job.py --config.rl.rl.batches=60 --config.workdir=runs/mj2
    python launch/main.py --config configs/main_job.py --config.stages=eval_before,rl,eval_after
    python launch/main.py --config configs/main_job.py:runlocal        # every stage in tiny sizes
    python launch/main.py --config configs/main_job.py --config.stages=control,eval_control   # the control

Each sub-config is a stage's own config, as its launcher reads it: `pretrain` (configs/tiny_coder.py),
`sft` (configs/sft_synthetic.py), `eval` (configs/eval.py, shared by both evaluations so they score
the same tasks the same way), `rl` (configs/rl_tiny.py). The fields that join the stages are left
empty here and set by launch/main.py from `workdir`: `<workdir>/pretrain`, `export/`, `sft/`,
`eval_before/`, `rl/`, `eval_after/` (the workdirs, `model.checkpoint`, `data.path`, the evals'
checkpoint and out_dir); a value given for one of them is refused. Fields: docs/configs.md.

Stage budgets (2 CPU cores; the whole job <= 15 min). Pre-training is autoregressive only (300
steps, ~1.6 min): SFT from that start passed 17.2% of the held-out-constant tasks after 1,200 steps,
against 4.3% from 300 AR + 100 masked-diffusion steps (docs/benchmarks.md, 2026-11-30). SFT (1,200
steps, ~4.5 min) makes it a diffusion model. Each evaluation scores all 256 + 303 held-out tasks
greedily with the dual cache (~1.2 min); RL runs 30 batches of 8 prompts x 8 samples (~5 min).
`--config.stages=control,eval_control` afterwards: SFT continued for RL's wall time, scored alike.
"""
import os

import ml_collections

from jaxdiff.config import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))
STAGES = "pretrain,export,sft,eval_before,rl,eval_after"
HELD_OUT = "synthetic-heldout-constants,synthetic-heldout-templates"


def _stage(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    return load_config_file(os.path.join(HERE, name) + (f":{arg}" if arg else ""))


def get_config(arg=None):
    """`configs/main_job.py:runlocal` selects the tiny variant (the whole pipeline in about a minute)."""
    if arg == "runlocal":
        return get_runlocal_config()
    if arg:
        raise ValueError(f"configs/main_job.py: unknown variant {arg!r} (known: runlocal)")
    c = ml_collections.ConfigDict()
    c.workdir = "runs/main_job"
    c.stages = STAGES              # comma-separated subset, run in this order; a finished stage is skipped
    c.bend = "auto"                # auto: Bend tasks join the RL mix when bend and hvm are on PATH | on | off

    c.pretrain = _stage("tiny_coder.py")
    p = c.pretrain
    p.objective.ar_only_steps = 0  # autoregressive only: SFT makes it a diffusion model (see the docstring)
    p.objective.ar_weight, p.objective.diffusion_weight = 1.0, 0.0
    p.train.steps = p.optimizer.total_steps = 300
    p.train.eval_every = p.train.checkpoint_every = 150

    # the SFT rows (jaxdiff.eval.export_sft): the training split less the constants kept for RL
    c.export = ml_collections.ConfigDict(dict(suite="synthetic-train-sft"))

    c.sft = _stage("sft_synthetic.py")
    s = c.sft
    s.train.steps = s.optimizer.total_steps = 1200
    s.train.eval_every = s.train.checkpoint_every = 600

    c.eval = _stage("eval.py")
    e = c.eval
    e.suite = HELD_OUT             # every comma-separated suite is scored before and after RL
    e.stride, e.limit = 1, 0       # every task of both splits: 256 new-constant and 303 unseen-template tasks
    e.gen_length = e.block_length = 40   # as SFT trained the answers (data.answer_length) and RL samples them
    e.cache = "dual"               # Fast-dLLM's dual cache (docs/sampling.md): ~35 s per split here
    e.batch_size, e.pad_bucket = 32, 64
    e.ks = "1"
    e.log_every = 1000

    c.rl = _stage("rl_tiny.py")
    r = c.rl.rl
    r.suites = "synthetic-train-rl"  # seen templates, constants SFT never saw (Bend's: main.BEND_SUITE)
    r.batches = 30
    r.checkpoint_every = 10
    c.rl.optimizer.total_steps = r.batches * r.mu
    _leave_wired_empty(c)
    return c


def _leave_wired_empty(c) -> None:
    """The fields launch/main.py sets from `workdir` (main.WIRED): empty until then."""
    for sub in (c.pretrain, c.sft, c.rl):
        sub.workdir = ""
    c.sft.model.checkpoint = c.rl.model.checkpoint = ""
    c.sft.data.path = ""
    c.eval.checkpoint = c.eval.out_dir = c.eval.name = ""


def get_runlocal_config():
    """Every stage in tiny sizes (a 1-layer dense model, a 320-token BPE, a few steps, 2 tasks per
    split, 2 RL batches): for tests and smoke runs; its numbers mean nothing."""
    c = get_config(None)
    c.workdir = "runs/main_job_runlocal"
    c.bend = "off"                 # Bend's compile-and-run per sample would dominate a smoke run
    tiny = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, num_experts=0)
    c.pretrain = _stage("tiny_coder.py", "runlocal")
    p = c.pretrain
    p.model.init.update(tiny)
    p.tokenizer.vocab_size, p.tokenizer.train_files = 320, 10
    p.train.steps = p.optimizer.total_steps = 2
    p.train.eval_every = p.train.checkpoint_every = 2
    p.train.eval_batches = 1
    c.sft = _stage("sft_synthetic.py", "runlocal")
    s = c.sft
    s.train.steps = s.optimizer.total_steps = 2
    s.train.eval_every = s.train.checkpoint_every = 2
    e = c.eval
    e.stride, e.limit = 50, 2
    e.gen_length = e.block_length = 8
    e.batch_size, e.pad_bucket = 2, 256
    e.warmup = False
    e.tensorboard = False
    c.rl = _stage("rl_tiny.py", "runlocal")
    c.rl.rl.prompts_per_batch = 2
    c.rl.rl.suites = "synthetic-train-rl"
    c.rl.rl.prompt_length = 0      # the longest prompt: a 320-token BPE spells them in more tokens than 64
    _leave_wired_empty(c)
    return c
