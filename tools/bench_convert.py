"""Conversion speed and memory: jaxdiff's convert_hf vs transformers' from_pretrained, same folder.

    python tools/bench_convert.py                    # ~3.7 GB synthetic Qwen3-MoE, 2 GB shards, 3 rounds
    python tools/bench_convert.py --layers 4 --keep  # bigger; keep the folders under --workdir

Builds a synthetic multi-shard checkpoint with the real Qwen3-Coder-30B-A3B layer shape (hidden 2048,
32/4 heads of 128, 128 experts of 768, vocab 151936) and fewer layers, in bf16, written tensor by
tensor (building it needs little memory too). Each measurement runs in a fresh subprocess that
imports this checkout; peak RSS is that process's ru_maxrss (file pages it maps count too).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPE = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
             num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8)


def tensor_specs(layers: int) -> list[tuple[str, tuple[int, ...]]]:
    d, v, h = SHAPE["hidden_size"], SHAPE["vocab_size"], SHAPE["head_dim"]
    n, k, e, f = SHAPE["num_attention_heads"], SHAPE["num_key_value_heads"], SHAPE["num_experts"], SHAPE["moe_intermediate_size"]
    out = [("model.embed_tokens.weight", (v, d))]
    for i in range(layers):
        p = f"model.layers.{i}"
        out += [(f"{p}.input_layernorm.weight", (d,)), (f"{p}.post_attention_layernorm.weight", (d,)),
                (f"{p}.self_attn.q_proj.weight", (n * h, d)), (f"{p}.self_attn.k_proj.weight", (k * h, d)),
                (f"{p}.self_attn.v_proj.weight", (k * h, d)), (f"{p}.self_attn.o_proj.weight", (d, n * h)),
                (f"{p}.self_attn.q_norm.weight", (h,)), (f"{p}.self_attn.k_norm.weight", (h,)),
                (f"{p}.mlp.gate.weight", (e, d))]
        for x in range(e):
            out += [(f"{p}.mlp.experts.{x}.gate_proj.weight", (f, d)), (f"{p}.mlp.experts.{x}.up_proj.weight", (f, d)),
                    (f"{p}.mlp.experts.{x}.down_proj.weight", (d, f))]
    out += [("model.norm.weight", (d,)), ("lm_head.weight", (v, d))]
    return out


def build(path: str, layers: int, shard_bytes: int) -> int:
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).astype(np.float32).view(np.uint32)
    pool = (pool >> 16).astype(np.uint16)  # bf16 bit patterns of small normal values
    specs = tensor_specs(layers)
    shards, cur, size = [], [], 0
    for name, shape in specs:
        nbytes = int(np.prod(shape)) * 2
        if cur and size + nbytes > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape))
        size += nbytes
    shards.append(cur)
    weight_map, total = {}, 0
    for si, shard in enumerate(shards):
        fname = f"model-{si + 1:05d}-of-{len(shards):05d}.safetensors"
        header, off = {}, 0
        for name, shape in shard:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header).encode()
        raw += b" " * ((-len(raw)) % 8)
        with open(os.path.join(path, fname), "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name, shape in shard:
                count = int(np.prod(shape))
                reps = -(-count // pool.size)
                f.write(np.tile(pool, reps)[:count].tobytes() if reps > 1 else pool[:count].tobytes())
                weight_map[name] = fname
        total += off
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    cfg = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_hidden_layers": layers,
           "rms_norm_eps": 1e-6, "rope_theta": 10000000.0, "max_position_embeddings": 262144,
           "tie_word_embeddings": False, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": [],
           "hidden_act": "silu", "torch_dtype": "bfloat16", **SHAPE}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return total


def _child(kind: str, src: str, out: str) -> dict:
    t0 = time.perf_counter()
    if kind.startswith("jaxdiff"):
        import jaxdiff
        assert os.path.abspath(jaxdiff.__file__).startswith(REPO), f"imported {jaxdiff.__file__}, not {REPO}"
    if kind == "jaxdiff":
        from jaxdiff.checkpoint.convert import convert_hf
        convert_hf(src, out, progress=False)
    elif kind == "jaxdiff-restore":
        from jaxdiff.checkpoint import load_params
        _, params = load_params(out)
        assert sum(int(np.prod(v.shape)) for v in params.values()) > 0
    else:
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
        assert sum(p.numel() for p in model.parameters()) > 0
    return {"seconds": time.perf_counter() - t0, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


ROWS = {"jaxdiff": "jaxdiff convert_hf (HF -> orbax, fsynced)",
        "jaxdiff-restore": "jaxdiff load_params (orbax -> host)",
        "transformers": "transformers from_pretrained (bf16)"}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_child(kind: str, src: str, out: str) -> dict:
    """One measurement in a fresh interpreter that imports this checkout's jaxdiff."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if kind == "jaxdiff":
        shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"], check=False)
    r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind, src, out], capture_output=True,
                       text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"{kind} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--shard_gb", type=float, default=2.0)
    p.add_argument("--repeat", type=int, default=3, help="rounds (rows alternate order); medians are reported")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(_child(*a.child)))
        return 0
    work = a.workdir or tempfile.mkdtemp(prefix="jaxdiff-bench-convert-")
    src, out = os.path.join(work, "hf"), os.path.join(work, "jd")
    try:
        t0 = time.perf_counter()
        total = build(src, a.layers, int(a.shard_gb * 1e9))
        files = [f for f in os.listdir(src) if f.endswith(".safetensors")]
        largest = max(os.path.getsize(os.path.join(src, f)) for f in files) / 1e9
        print(f"synthetic Qwen3-MoE ({a.layers} layers of the 30B-A3B shape, bf16): {total / 1e9:.2f} GB in "
              f"{len(files)} shards, largest {largest:.2f} GB (built in {time.perf_counter() - t0:.0f} s)")
        res: dict[str, list[dict]] = {k: [] for k in ROWS}
        for rnd in range(a.repeat):
            # conversion must precede its restore; transformers goes first in every other round
            order = ["jaxdiff", "jaxdiff-restore", "transformers"]
            if rnd % 2:
                order = order[2:] + order[:2]
            for kind in order:
                r = _run_child(kind, src, out)
                res[kind].append(r)
                print(f"  round {rnd + 1}: {kind:16s} {r['seconds']:6.1f} s  peak RSS {r['peak_rss_gb']:.2f} GB  "
                      f"(load avg {os.getloadavg()[0]:.1f})", flush=True)
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_rss_gb")} for k, v in res.items()}
        best = {k: min(r["seconds"] for r in v) for k, v in res.items()}
        print(f"{a.repeat} round(s); each run a fresh process, imports included; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} at the end")
        print(f"{'':42s} {'median s':>8s} {'GB/s':>6s} {'best s':>7s} {'GB/s':>6s} {'peak RSS GB':>12s}")
        for kind, r in med.items():
            print(f"{ROWS[kind]:42s} {r['seconds']:8.1f} {total / 1e9 / r['seconds']:6.2f} {best[kind]:7.1f} "
                  f"{total / 1e9 / best[kind]:6.2f} {r['peak_rss_gb']:12.2f}")
        j, t = med["jaxdiff"], med["transformers"]
        print(f"jaxdiff/transformers: time x{j['seconds'] / t['seconds']:.2f} (median), "
              f"x{best['jaxdiff'] / best['transformers']:.2f} (best); peak RSS x{j['peak_rss_gb'] / t['peak_rss_gb']:.2f}")
        print(f"goal peak RSS <= largest shard + 1.5 GB = {largest + 1.5:.2f} GB: "
              f"{'met' if j['peak_rss_gb'] <= largest + 1.5 else 'MISSED'} ({j['peak_rss_gb']:.2f} GB)")
        for label, jj, tt in (("median", j["seconds"], t["seconds"]), ("best", best["jaxdiff"], best["transformers"])):
            print(f"goal conversion no slower than transformers' load ({label}): "
                  f"{'met' if jj <= tt else 'MISSED'} ({jj:.1f} s vs {tt:.1f} s)")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
