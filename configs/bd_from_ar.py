"""AR -> block diffusion adaptation: start from an autoregressive model and train the block-diffusion
objective (BD3LM; what SDAR, Fast-dLLM v2 and LLaDA2 do to AR checkpoints), growing the block size
from small blocks, close to the next-token task the model knows, to the block size it is sampled with.

    python launch/train.py --config configs/bd_from_ar.py:ar            # the AR start: runs/tiny_coder_ar
    python launch/train.py --config configs/bd_from_ar.py               # adapt it: runs/bd_from_ar
    python launch/sample.py --config configs/sample.py --config.checkpoint=runs/bd_from_ar \
        --config.block_length=16 --config.policy=threshold:0.9          # block cache, by default

`:ar` is the main job's model (configs/tiny_coder.py) trained with the AR objective only, for as many
steps as the main job's AR warm-up. `model.checkpoint` may be any full-training workdir, or an AR
checkpoint folder (an HF Qwen3 / Qwen3-Coder) with `lora.full_training=False` (adapters on the frozen
base). `:runlocal` and `:ar_runlocal` are seconds-long variants (runs/bd_from_ar_runlocal from
runs/tiny_coder_ar_runlocal).
"""
import os

from jaxdiff.config import load_config_file


def _tiny_coder(variant: str = ""):
    """configs/tiny_coder.py[:variant] beside this file (by path, as --config loads files)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_coder.py")
    return load_config_file(f"{path}:{variant}" if variant else path)


def get_config(arg=None):
    variants = {None: _adapt, "ar": _ar_start, "runlocal": _adapt_runlocal, "ar_runlocal": _ar_start_runlocal}
    if arg not in variants:
        raise ValueError(f"configs/bd_from_ar.py: unknown variant {arg!r} (known: ar, runlocal, ar_runlocal)")
    return variants[arg]()


def _ar_start():
    """The tiny coder trained autoregressively only (its AR warm-up, run on its own)."""
    c = _tiny_coder()
    c.workdir = "runs/tiny_coder_ar"
    c.objective.ar_only_steps = 0
    c.objective.ar_weight, c.objective.diffusion_weight = 1.0, 0.0
    c.train.steps = c.optimizer.total_steps = 300
    return c


def _adapt():
    c = _tiny_coder()
    c.workdir = "runs/bd_from_ar"
    c.model.checkpoint = "runs/tiny_coder_ar"   # a full-training workdir: its trained model and tokenizer
    c.objective.ar_only_steps = 0
    c.objective.kind = "block_diffusion"
    c.objective.block_size = 16                 # = sample.block_length: what the model is sampled with
    c.objective.block_size_schedule = "4@0,8@150,16@300"
    c.train.steps = c.optimizer.total_steps = 600
    c.optimizer.warmup_steps = 20
    return c


def _ar_start_runlocal():
    c = _tiny_coder("runlocal")
    c.workdir = "runs/tiny_coder_ar_runlocal"
    c.objective.ar_weight, c.objective.diffusion_weight = 1.0, 0.0
    return c


def _adapt_runlocal():
    c = _tiny_coder("runlocal")
    c.workdir = "runs/bd_from_ar_runlocal"
    c.model.checkpoint = "runs/tiny_coder_ar_runlocal"
    c.objective.kind = "block_diffusion"
    c.objective.block_size = 4                  # = sample.block_length of the runlocal variant
    c.objective.block_size_schedule = "2@0,4@3"
    return c
