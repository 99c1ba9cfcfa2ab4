"""Sample from a jaxdiff model, printing the completion block by block as it is committed.

    python launch/sample.py --config configs/sample.py --config.checkpoint=runs/tiny_coder \
        --config.prompt="def fibonacci(n):"

Then prints the steps used, forward passes (NFE), tokens per forward and tokens/s. Config fields:
configs/sample.py and docs/sampling.md.
"""
from __future__ import annotations

import logging
import time

from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags

from jaxdiff.config import cli

PROG = "launch/sample.py"
_CONFIG = config_flags.DEFINE_config_file("config", None, "config file (configs/sample.py)", lock_config=True)

MODES = ("diffusion", "scaffold", "ar")


def _prompt_ids(c, tokenizer) -> list[int]:
    if c.prompt_ids:
        try:
            return [int(t) for t in c.prompt_ids.split(",") if t.strip()]
        except ValueError:
            cli.refuse(PROG, f"config.prompt_ids={c.prompt_ids!r}: expected comma-separated integers")
    if tokenizer is None:
        cli.refuse(PROG, f"{c.checkpoint} has no tokenizer: pass config.prompt_ids or config.tokenizer")
    return tokenizer(c.prompt, add_special_tokens=False)["input_ids"]


class BlockPrinter:
    """Prints each finished block's text (up to EOS) as the sampler reports it."""

    def __init__(self, tokenizer, eos_id):
        self.tokenizer, self.eos_id, self.ended, self.silent = tokenizer, eos_id, False, False

    def __call__(self, index, tokens, done):
        if self.ended or self.silent:
            return
        ids = [int(t) for t in tokens[0]]
        if self.eos_id is not None and self.eos_id in ids:
            ids, self.ended = ids[:ids.index(self.eos_id)], True
        text = self.tokenizer.decode(ids) if self.tokenizer is not None else " ".join(map(str, ids)) + " "
        print(text, end="", flush=True)


def main(argv):
    del argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)
    c = _CONFIG.value
    if c is None:
        cli.refuse(PROG, "--config is required, e.g. --config configs/sample.py")
    if c.mode not in MODES:
        cli.refuse(PROG, f"config.mode={c.mode!r}: choose from {', '.join(MODES)}")
    import jax
    import numpy as np

    from jaxdiff.sample import ar_generate, generate, get_policy, scaffold_then_infill
    from jaxdiff.sample.load import load_for_sampling

    try:
        get_policy(c.policy)
        model, tok = load_for_sampling(c.checkpoint, step=None if c.step < 0 else c.step, dtype=c.dtype or None,
                                       tokenizer_path=c.tokenizer or None, mask_id=None if c.mask_id < 0 else c.mask_id)
    except (ValueError, FileNotFoundError) as e:
        cli.refuse(PROG, str(e))
    ids = _prompt_ids(c, tok)
    key = jax.random.key(c.seed)
    eos = model.config.eos_token_id if c.stop_at_eos else None
    kw = dict(block_length=c.block_length, steps=None if c.auto_length else c.steps, policy=c.policy,
              temperature=c.temperature, cfg_scale=c.cfg_scale, attention=c.attention, cache=c.cache,
              stop_at_eos=c.stop_at_eos, key=key)
    gen = "auto" if c.auto_length else c.gen_length
    if c.auto_length:
        kw["max_gen_length"] = c.gen_length
    printer = BlockPrinter(tok, eos)
    prompt_text = tok.decode(ids) if tok is not None else " ".join(map(str, ids))

    def run(stream: bool):
        if c.mode == "diffusion":
            out, st = generate(model, [ids], gen_length=gen, on_block=printer, **kw)
            return np.asarray(out[0]).tolist(), st.steps, st.forward_passes, st.tokens
        if c.mode == "ar":
            out, st = ar_generate(model, [ids], max_new_tokens=c.gen_length, temperature=c.temperature, key=key,
                                  stop_ids=() if eos is None else (eos,))
            row = np.asarray(out[0]).tolist()
            if stream:
                printer(0, np.asarray([row[len(ids):]]), None)
            return row, st.tokens, st.forward_passes, st.tokens
        if tok is None:
            cli.refuse(PROG, "config.mode=scaffold needs a tokenizer (config.scaffold_stop is text)")
        stop = tok(c.scaffold_stop, add_special_tokens=False)["input_ids"][:1]
        kw2 = {k: v for k, v in kw.items() if k not in ("key",)}
        row, info = scaffold_then_infill(model, ids, scaffold_max_tokens=c.scaffold_max_tokens, scaffold_stop_ids=stop,
                                         gen_length=c.gen_length, key=key, **kw2)
        if stream:
            printer(0, np.asarray([row[len(ids):]]), None)
        d = info["diffusion"]
        return row, d.steps + info["ar_forward_passes"], info["forward_passes"], info["scaffold_tokens"] + d.tokens

    if c.warmup:   # the same compiled program as the timed run (the printer is part of it), silenced
        printer.silent = True
        run(stream=False)
        printer.silent = False
    print(prompt_text, end="", flush=True)
    t0 = time.perf_counter()
    row, steps, nfe, tokens = run(stream=True)
    dt = time.perf_counter() - t0
    print()
    heads = {"diffusion": "diffusion", "ar": "ar", "scaffold": "ar, diffusion"}[c.mode]
    if c.auto_length and c.mode != "ar":
        heads = "length, " + heads
    trained = sorted(getattr(model, "lora_heads", ())) or ["none (base only)"]
    print(f"--- mode={c.mode} gen_length={'auto' if c.auto_length else c.gen_length} policy={c.policy} "
          f"cache={c.cache} attention={c.attention} heads used: {heads} (adapters in the model: {', '.join(trained)})")
    print(f"steps {steps}, forward passes (NFE) {nfe}, tokens {tokens:.0f}, tokens per forward {tokens / max(nfe, 1):.2f}, "
          f"tokens/s {tokens / dt:.1f} ({dt:.2f} s{'' if c.warmup else ', including compilation'})")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser(PROG))
