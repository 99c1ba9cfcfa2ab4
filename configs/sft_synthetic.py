"""SFT of the main job's tiny coder on the synthetic Python family's training split (raw completion
rows: the task's prompt, then its reference body and EOS; the prompt is never noised).

    python -m jaxdiff.eval.export_sft --suite synthetic-train --out runs/synthetic_train.jsonl
    python launch/train.py --config configs/tiny_coder.py --config.workdir=runs/tiny_coder      # first
    python launch/train.py --config configs/sft_synthetic.py --config.workdir=runs/sft_synthetic
    python launch/eval.py --config configs/eval.py --config.checkpoint=runs/sft_synthetic \
        --config.suite=synthetic-heldout-constants

`model.checkpoint` is the pre-training run's workdir: its trained model (every weight, mask row
included) and its tokenizer are the starting point, and every weight keeps training.
`configs/sft_synthetic.py:runlocal` is a seconds-long variant on `tiny_coder.py:runlocal`'s workdir.

Measured (docs/benchmarks.md): three 600-step runs, each from the previous one's workdir
(`--config.model.checkpoint=runs/sft_synthetic --config.workdir=runs/sft_synthetic_2`, then _2 -> _3),
reach 36.7% greedy pass@1 on the 256 held-out-constant tasks (2.3% after the first run, 18.4% after
the second); 0% on unseen templates. A length head for infilling at a predicted length, as an adapter
on the frozen SFT model: `--config.model.checkpoint=runs/sft_synthetic_3 --config.lora.full_training=False
--config.objective.diffusion_weight=0.0 --config.objective.length_weight=1.0
--config.length_head.edges=8,16,24,32,40 --config.train.steps=200` (docs/benchmarks.md).
"""
from jaxdiff.config import defaults as base


def get_config(arg=None):
    if arg == "runlocal":
        return get_runlocal_config()
    if arg:
        raise ValueError(f"configs/sft_synthetic.py: unknown variant {arg!r} (known: runlocal)")
    c = base.get_config()
    c.workdir = "runs/sft_synthetic"
    c.model.checkpoint = "runs/tiny_coder"    # a full-training workdir: start from its trained model
    c.lora.full_training = True
    c.data.kind = "sft"
    c.data.path = "runs/synthetic_train.jsonl"  # python -m jaxdiff.eval.export_sft --suite synthetic-train
    c.data.seq_len = 264                      # longest prompt 222 tokens (digits split) + the 40-token answer window
    c.data.answer_length = 40                 # answers (<= 32 tokens + EOS) padded with EOS to the sampler's gen_length
    c.data.batch_size = 8
    c.data.eval_permille = 50
    c.objective.sft = True
    c.objective.diffusion_weight = 1.0
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 10
    c.optimizer.total_steps = 600
    c.optimizer.weight_decay = 0.01
    c.train.steps = 600
    c.train.log_every = 10
    c.train.eval_every = 300
    c.train.eval_batches = 4
    c.train.checkpoint_every = 300
    c.sample.prompt = 'def add_7(x):\n    """Return x plus 7.\n    >>> add_7(1)\n    8\n    """\n'
    c.sample.gen_length = 40
    c.sample.block_length = 40
    c.sample.steps = 40
    return c


def get_runlocal_config():
    """Seconds long: from `configs/tiny_coder.py:runlocal`'s workdir (runs/tiny_coder_runlocal)."""
    c = get_config(None)
    c.workdir = "runs/sft_synthetic_runlocal"
    c.model.checkpoint = "runs/tiny_coder_runlocal"
    c.data.batch_size = 4
    c.train.steps, c.train.eval_every, c.train.checkpoint_every, c.train.eval_batches = 4, 2, 2, 1
    c.optimizer.total_steps, c.optimizer.warmup_steps = 4, 1
    c.sample.gen_length, c.sample.block_length, c.sample.steps = 8, 8, 8
    return c
