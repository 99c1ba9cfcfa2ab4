"""Sampling throughput: AR decoding, naive diffusion, cached threshold diffusion, and the published
LLaDA `generate` loop on transformers, on the same weights and prompts, in one run.

    python tools/bench_sample.py                                  # the trained tiny coder (runs/tiny_coder)
    python tools/bench_sample.py --workdir runs/tiny_coder --threshold 0.3 --cache dual
    python tools/bench_sample.py --shape qwen3-0.6b --dtype bfloat16   # random 0.6B-shaped weights (GPU)
    python tools/bench_sample.py --shape moe-small --dtype bfloat16    # random small Qwen3-MoE (GPU)

Methods (batch 1, one prompt at a time, every answer gen_length tokens, no EOS stop):
  (a) ar         jaxdiff AR greedy decoding with a KV cache (one token per forward)
  (b) naive      jaxdiff diffusion, no cache, low_confidence, steps = gen_length (one token per step)
  (c) cached     jaxdiff diffusion, threshold policy, Fast-dLLM cache (--cache; dual by default)
  (d) llada-torch  the published LLaDA generate loop (low_confidence, steps = gen_length) on
                 transformers' Qwen3 with the same weights and a bidirectional attention mask
Each jaxdiff method is compiled on a warm-up prompt first; times are wall clock for all prompts.
Agreement columns: the share of answer tokens equal to (b)'s (for (d) this is also a parity check:
the same algorithm on the same weights must agree).

The tiny coder is trained by the README's main command if --workdir does not exist (~7 min on CPU).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n",
    "class Stack:\n    def __init__(self):\n        self.",
    "    for i in range(10):\n        print(i)\n",
    "def read_lines(path):\n    with open(path) as f:\n",
    "        if not isinstance(value, str):\n            raise TypeError(",
    "    def __repr__(self):\n        return ",
    "import re\n\n_PATTERN = re.compile(r",
]

SHAPES = {   # random weights, for GPU figures: (ModelConfig fields)
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "moe-small": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=16, num_key_value_heads=4, head_dim=128, num_experts=32,
                      num_experts_per_tok=4, moe_intermediate_size=384, norm_topk_prob=True),
}


def load(args):
    """(model, tokenizer or None, prompt id lists)."""
    import jax.numpy as jnp

    if args.shape:
        from jaxdiff.model import ModelConfig, build_model
        kw = SHAPES[args.shape]
        cfg = ModelConfig(**kw, mask_token_id=kw["vocab_size"] - 1, eos_token_id=kw["vocab_size"] - 2)
        model = build_model(cfg, dtype=jnp.dtype(args.dtype), seed=0)
        rng = np.random.RandomState(0)
        return model, None, [rng.randint(0, 150000, 24).tolist() for _ in PROMPTS]
    from jaxdiff.sample.load import load_for_sampling
    if not os.path.isdir(args.workdir):
        print(f"{args.workdir} does not exist: training the tiny coder there first (the README's main job)")
        subprocess.run([sys.executable, "launch/train.py", "--config", "configs/tiny_coder.py",
                        f"--config.workdir={args.workdir}"], cwd=ROOT, check=True)
    model, tok = load_for_sampling(args.workdir)
    return model, tok, [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def left_pad(ids, length, pad):
    return [pad] * (length - len(ids)) + ids, [False] * (length - len(ids)) + [True] * len(ids)


def run_jax(name, fn, prompts, bucket, pad):
    """fn(row [1, P], mask [1, P]) -> (answer ids, forward passes). Warm-up on prompt 0, then timed."""
    import jax
    row, mask = left_pad(prompts[0], bucket, pad)
    jax.block_until_ready(fn([row], [mask])[0])
    answers, nfe = [], 0
    t0 = time.perf_counter()
    for ids in prompts:
        row, mask = left_pad(ids, bucket, pad)
        ans, n = fn([row], [mask])
        answers.append(np.asarray(ans))
        nfe += n
    return name, time.perf_counter() - t0, nfe, answers


def llada_torch(hf, prompt, *, steps, gen_length, block_length, mask_id):
    """The published LLaDA generate loop (low_confidence remasking, temperature 0, no CFG) on a
    transformers causal LM made bidirectional by an all-visible 4-D attention mask."""
    import torch
    import torch.nn.functional as F

    x = torch.full((1, len(prompt) + gen_length), mask_id, dtype=torch.long)
    x[:, :len(prompt)] = torch.tensor(prompt)
    attn = torch.zeros((1, 1, x.shape[1], x.shape[1]), dtype=hf.dtype)
    num_blocks = gen_length // block_length
    steps_pb = steps // num_blocks
    nfe = 0
    for nb in range(num_blocks):
        lo, hi = len(prompt) + nb * block_length, len(prompt) + (nb + 1) * block_length
        block_mask = x[:, lo:hi] == mask_id
        mask_num = block_mask.sum(dim=1, keepdim=True)
        ntt = torch.zeros(1, steps_pb, dtype=torch.long) + mask_num // steps_pb
        ntt[:, :int(mask_num % steps_pb)] += 1
        for i in range(steps_pb):
            mask_index = x == mask_id
            logits = hf(x, attention_mask=attn).logits
            nfe += 1
            x0 = torch.argmax(logits, dim=-1)
            p = F.softmax(logits.to(torch.float64), dim=-1)
            x0_p = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            x0_p[:, hi:] = -np.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(-np.inf, dtype=x0_p.dtype))
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            _, sel = torch.topk(confidence[0], k=int(ntt[0, i]))
            transfer[0, sel] = True
            x[transfer] = x0[transfer]
    return x[0, len(prompt):].numpy(), nfe


def torch_model(model):
    """The same weights in transformers: written as an HF folder (safetensors + config.json, as
    `save_pretrained` writes it) and loaded with `from_pretrained`."""
    import json
    import tempfile

    import torch
    from safetensors.numpy import save_file
    from transformers import AutoModelForCausalLM

    from jaxdiff.checkpoint import hf_tensors

    dtype = torch.bfloat16 if str(model.dtype) == "bfloat16" else torch.float32
    with tempfile.TemporaryDirectory() as d:
        save_file({k: np.asarray(v, np.float32) for k, v in hf_tensors(model).items()},
                  os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(model.config.to_hf(), f)
        return AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="sdpa").eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=os.path.join(ROOT, "runs", "tiny_coder"))
    ap.add_argument("--shape", choices=sorted(SHAPES), default=None, help="random weights of this shape instead")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="with --shape")
    ap.add_argument("--gen_length", type=int, default=64)
    ap.add_argument("--block_length", type=int, default=16)
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--cache", default="dual", choices=("prefix", "dual", "none"))
    ap.add_argument("--prompts", type=int, default=len(PROMPTS))
    ap.add_argument("--skip_torch", action="store_true")
    args = ap.parse_args(argv)

    import jax
    import torch
    from flax import nnx

    from jaxdiff.sample import ar_generate, generate

    model, tok, prompts = load(args)
    prompts = prompts[:args.prompts]
    bucket = max(len(p) for p in prompts)
    pad = model.config.pad_token_id or 0
    g, bl = args.gen_length, args.block_length
    mask_id = model.config.mask_token_id

    def ar(row, mask):
        out, st = ar_generate(model, row, prompt_mask=mask, max_new_tokens=g, lora=None)
        return out[0, bucket:], st.forward_passes

    def naive(row, mask):
        out, st = generate(model, row, prompt_mask=mask, gen_length=g, block_length=bl, steps=g, cache="none",
                           stop_at_eos=False)
        return out[0, bucket:], st.forward_passes

    def cached(row, mask):
        out, st = generate(model, row, prompt_mask=mask, gen_length=g, block_length=bl, steps=g,
                           policy=f"threshold:{args.threshold}", cache=args.cache, stop_at_eos=False)
        return out[0, bucket:], st.forward_passes

    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    print(f"model: {args.shape or args.workdir} ({n_params / 1e6:.1f}M params, "
          f"{model.dtype}); {len(prompts)} prompts, gen_length {g}, block_length {bl}; "
          f"devices {jax.devices()[0].platform} x{jax.device_count()}; torch threads {torch.get_num_threads()}")
    results = [run_jax("(a) ar, KV cache", ar, prompts, bucket, pad),
               run_jax("(b) naive diffusion", naive, prompts, bucket, pad),
               run_jax(f"(c) threshold {args.threshold}, {args.cache} cache", cached, prompts, bucket, pad)]
    if not args.skip_torch:
        hf = torch_model(model)
        with torch.inference_mode():
            llada_torch(hf, prompts[0], steps=g, gen_length=g, block_length=bl, mask_id=mask_id)   # warm-up
            t0 = time.perf_counter()
            outs = [llada_torch(hf, p, steps=g, gen_length=g, block_length=bl, mask_id=mask_id) for p in prompts]
            results.append(("(d) LLaDA loop, transformers", time.perf_counter() - t0, sum(n for _, n in outs),
                            [a for a, _ in outs]))
    tokens = g * len(prompts)
    ref = np.concatenate(results[1][3])
    print(f"\n{'method':36s} {'tokens/s':>9s} {'NFE/prompt':>10s} {'tok/forward':>11s} {'= (b)':>6s}")
    rows = {}
    for name, dt, nfe, answers in results:
        agree = float(np.mean(np.concatenate(answers) == ref))
        rows[name[:3]] = tokens / dt
        print(f"{name:36s} {tokens / dt:9.1f} {nfe / len(prompts):10.1f} {tokens / nfe:11.2f} {agree:6.2f}")
    print(f"\n(c)/(b) tokens/s: {rows['(c)'] / rows['(b)']:.2f}x" +
          (f"   (c)/(d): {rows['(c)'] / rows['(d)']:.2f}x   (b)/(d): {rows['(b)'] / rows['(d)']:.2f}x" if '(d)' in rows else "")
          + f"   (c)/(a): {rows['(c)'] / rows['(a)']:.2f}x")
    if tok is not None:
        print("\nsample (c):", repr(tok.decode(prompts[0]) + tok.decode(results[2][3][0].tolist())))


if __name__ == "__main__":
    main()
