"""Logits of jaxdiff vs transformers on the same tokens; exits non-zero above tolerance.

    python tools/compare_hf.py --hf_dir /ckpt/Qwen3-0.6B
    python tools/compare_hf.py --hf_dir /ckpt/Qwen3-0.6B --ckpt_dir /ckpt/qwen3-0.6b-jaxdiff --attention block

transformers runs the HF folder (eager attention; for `bidirectional` and `block` it receives the
matching 4-D additive mask); jaxdiff runs `--ckpt_dir` (a converted checkpoint) or the same HF folder.
Default tolerance: 1e-4 in float32 (the project's whole-model policy), 5e-2 in bfloat16.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}


def hf_additive_mask(attention: str, length: int, batch: int, block_size: int, prompt_len: int):
    """[B, 1, L, L] float32 additive mask built directly from the mode's definition."""
    i = np.arange(length)
    if attention == "causal":
        allowed = i[None, :] <= i[:, None]
    elif attention == "bidirectional":
        allowed = np.ones((length, length), bool)
    else:
        block = np.where(i < prompt_len, 0, 1 + (i - prompt_len) // block_size)
        allowed = block[None, :] <= block[:, None]
    mask = np.where(allowed, 0.0, np.finfo(np.float32).min).astype(np.float32)
    return np.broadcast_to(mask, (batch, 1, length, length)).copy()


def compare(hf_dir: str, ckpt_dir: str | None = None, *, attention: str = "causal", dtype: str = "float32",
            batch: int = 2, length: int = 32, block_size: int = 8, prompt_len: int = 8, seed: int = 0) -> float:
    import jax.numpy as jnp
    import torch
    from transformers import AutoModelForCausalLM

    import jaxdiff
    from jaxdiff.model import ModelConfig

    cfg = ModelConfig.from_hf(hf_dir)
    if cfg.fp8_block_size is not None:
        raise SystemExit(f"{hf_dir}: FP8 checkpoint; transformers cannot run block-FP8 on this device. "
                         "Compare the dequantized model instead: convert with --dtype bfloat16 and pass that "
                         "folder's HF export (tools/export_hf.py).")
    tokens = np.random.RandomState(seed).randint(0, cfg.vocab_size, (batch, length))
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype, attn_implementation="eager").eval()
    with torch.no_grad():
        if attention == "causal":
            ref = hf(torch.tensor(tokens)).logits
        else:
            mask = torch.tensor(hf_additive_mask(attention, length, batch, block_size, prompt_len)).to(torch_dtype)
            ref = hf(torch.tensor(tokens), attention_mask=mask).logits
    ref = ref.float().numpy()
    model = jaxdiff.load_model(ckpt_dir or hf_dir, dtype=dtype)
    out = model(jnp.asarray(tokens), attention=attention, block_size=block_size,
                prompt_lengths=jnp.full((batch,), prompt_len, jnp.int32))
    return float(np.max(np.abs(np.asarray(out) - ref)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf_dir", required=True)
    p.add_argument("--ckpt_dir", default=None, help="converted jaxdiff checkpoint (default: load --hf_dir directly)")
    p.add_argument("--attention", choices=["causal", "bidirectional", "block"], default="causal")
    p.add_argument("--dtype", choices=sorted(TOLERANCE), default="float32")
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--length", type=int, default=32)
    p.add_argument("--block_size", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=8)
    a = p.parse_args(argv)
    tol = a.tol if a.tol is not None else TOLERANCE[a.dtype]
    diff = compare(a.hf_dir, a.ckpt_dir, attention=a.attention, dtype=a.dtype, batch=a.batch,
                   length=a.length, block_size=a.block_size, prompt_len=a.prompt_len)
    ok = diff <= tol
    print(f"attention={a.attention} dtype={a.dtype} max|logit diff|={diff:.3e} tol={tol:.0e} "
          f"{'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
