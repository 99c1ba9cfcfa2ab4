"""Sampling from a trained workdir, a converted checkpoint or an HF folder.

    python launch/sample.py --config configs/sample.py --config.checkpoint=runs/tiny_coder \
        --config.prompt="def fibonacci(n):"
    python launch/sample.py --config configs/sample.py --config.checkpoint=runs/tiny_coder \
        --config.policy=threshold:0.3 --config.cache=dual
    python launch/sample.py --config configs/sample.py --config.checkpoint=/ckpt/q06b-jd --config.mode=scaffold

Fields are documented in docs/sampling.md.
"""
import ml_collections


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/sample.py: unknown variant {arg!r}")
    c = ml_collections.ConfigDict()
    c.checkpoint = ""          # training workdir | converted checkpoint | HF folder
    c.step = -1                # workdir checkpoint step (-1: newest)
    c.dtype = ""               # "" keeps the stored dtype; float32 | bfloat16 (converted/HF only)
    c.tokenizer = ""           # "" = the checkpoint's own
    c.mask_id = -1             # for a base checkpoint with neither mask token nor tokenizer (-1: none)
    c.prompt = "def fibonacci(n):\n"
    c.prompt_ids = ""          # comma-separated token ids instead of prompt (no tokenizer needed)
    c.mode = "diffusion"       # diffusion | scaffold (AR head writes the scaffold, diffusion the body) | ar
    c.gen_length = 64          # answer tokens (a multiple of block_length)
    c.auto_length = False      # let the length head choose gen_length (capped by gen_length)
    c.block_length = 32
    c.steps = 64               # denoising steps over the whole answer (multiple of the block count)
    c.policy = "low_confidence"  # low_confidence | random | random_topk[:noise] | margin | entropy | threshold[:t]
    c.temperature = 0.0
    c.cfg_scale = 0.0
    c.attention = "auto"       # auto (block_diffusion for such a model, else bidirectional) | bidirectional | block
    c.cache = "auto"           # auto | none | block | prefix | dual
    c.stop_at_eos = True
    c.scaffold_max_tokens = 64 # mode=scaffold: AR tokens at most
    c.scaffold_stop = '"""\n'  # mode=scaffold: the scaffold ends after the first token of this text
    c.seed = 0
    c.warmup = True            # compile once before the timed run (tokens/s without compilation)
    return c
