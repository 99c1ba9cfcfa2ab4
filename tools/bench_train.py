"""Train-step throughput: jaxdiff's jitted LoRA masked-diffusion step vs transformers + peft.

    python tools/bench_train.py                 # ~50M-param Qwen3-MoE shape, seq 512, CPU
    python tools/bench_train.py --steps 5 --batch 2
    python tools/bench_train.py --only jaxdiff --profile 2   # + per-op profile of 2 steps (jax.profiler)
    python tools/bench_train.py --mesh data=8 --mesh fsdp=2,expert=4 --mesh data=2,expert=2,tensor=2 --batch 8
        # jaxdiff only, one step time per mesh layout (8 fake CPU devices: for relative comparison only)

Both sides: the same Qwen3-MoE config and random weights, LoRA r=16 alpha=32 on q/k/v/o, the LLaDA
loss (mask with probability t, CE / t over masked tokens / (B*L)) under bidirectional attention,
AdamW. Each side runs in its own subprocess so peak RSS is its own. Prints tokens/s, peak RSS and
the ratios.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import resource
import subprocess
import sys
import time

CONFIG = dict(vocab_size=16384, hidden_size=512, intermediate_size=1024, num_hidden_layers=5,
              num_attention_heads=8, num_key_value_heads=4, head_dim=64, num_experts=8,
              num_experts_per_tok=2, moe_intermediate_size=512, norm_topk_prob=True)
RANK, ALPHA = 16, 32.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# profile categories: the first pattern found in an op's name (named scopes, einsum specs) wins
CATEGORIES = (("attention scores (attend)", r"attend|flash_attention|BQKGH|BKGQS"),
              ("MoE experts (grouped matmul)", r"ZRD,ZFD|ZRF|ragged_dot"),
              ("vocabulary loss (lm head)", r"token_stats|VD->\.\.\.V|ND,NFD"),
              ("projections + LoRA", r"\.\.\.D,FD->\.\.\.F"))


CONTAINERS = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end: ", "while", "conditional", "call")


def profile_steps(step, args, n: int, out_dir: str, top: int = 12) -> dict:
    """Traces n calls of the jitted `step(*args)` with jax.profiler and sums each compiled op's
    thread time, by category (CATEGORIES, else the op's primitive) and by op. Returns {"categories":
    [(name, ms per step, share)], "ops": [(op, ms per step, shape, op name)], "total_ms"}."""
    import jax

    text = step.lower(*args).compile().as_text()
    meta = {}
    for line in text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name=\"([^\"]*)\"", line)
        if m:
            meta[m.group(1)] = (m.group(2), m.group(3))
    jax.profiler.start_trace(out_dir)
    state = args
    for _ in range(n):
        out = step(*state)
        state = (state[0], out[0], out[1], *state[3:])
    jax.block_until_ready(out)
    jax.profiler.stop_trace()
    trace = sorted(glob.glob(f"{out_dir}/**/*.xplane.pb", recursive=True))[-1]
    per_op = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(trace).planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):      # XLA:CPU's compute threads
                continue
            for ev in line.events:   # leaf ops only: loops and calls enclose their bodies' events
                if not ev.name.startswith(CONTAINERS):
                    per_op[ev.name] += ev.duration_ns / 1e6 / n
    cats = collections.Counter()
    for op, ms in per_op.items():
        shape, name = meta.get(op, ("", op))
        cat = next((c for c, pat in CATEGORIES if re.search(pat, name)), "other: " + name.split("/")[-1])
        cats[cat] += ms
    total = sum(per_op.values())
    return {"total_ms": total,
            "categories": [(c, ms, ms / total) for c, ms in cats.most_common()],
            "ops": [(op, ms, *meta.get(op, ("", ""))) for op, ms in per_op.most_common(top)]}


def print_profile(prof: dict, top_categories: int = 14) -> None:
    print(f"profile: {prof['total_ms']:.0f} ms of op time per step (summed over XLA:CPU threads)")
    for cat, ms, share in prof["categories"][:top_categories]:
        print(f"  {ms:9.1f} ms {100 * share:5.1f}%  {cat}")
    print("  largest ops:")
    for op, ms, shape, name in prof["ops"]:
        print(f"  {ms:9.1f} ms  {op:28s} {shape[:34]:34s} {name[-80:]}")


def run_jaxdiff(batch: int, seq: int, steps: int, mesh_spec: str = "", dispatch: str = "auto",
                profile: int = 0) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxdiff.model import ModelConfig, ModelOptions, build_model
    from jaxdiff.model.lora import LoRASpec, add_lora
    from jaxdiff.model.mask_token import add_mask_token
    from jaxdiff.train import state as st
    from jaxdiff.train.optim import OptimConfig, build_optimizer
    from jaxdiff.train.step import ObjectiveConfig, jit_train_step, make_train_step

    import contextlib

    from jaxdiff.model import place
    from jaxdiff.parallel import make_mesh, use_mesh
    from jaxdiff.train.step import init_opt_state, step_shardings

    cfg = ModelConfig(**CONFIG)
    mesh = make_mesh(dict((k, int(v)) for k, v in (kv.split("=") for kv in mesh_spec.split(",")))) if mesh_spec else None
    model = build_model(cfg, options=ModelOptions(moe_dispatch=dispatch, mesh=mesh))
    add_mask_token(model, mask_token_id=cfg.vocab_size - 1)
    add_lora(model, "diffusion", LoRASpec(rank=RANK, alpha=ALPHA))
    rs = np.random.RandomState(0)
    data = {"tokens": jnp.asarray(rs.randint(0, cfg.vocab_size - 1, (batch, seq)), jnp.int32),
            "valid": jnp.ones((batch, seq), bool), "prompt_lengths": jnp.zeros((batch,), jnp.int32)}
    with use_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        if mesh is not None:
            place(model, mesh)
        g, frozen, trainable = st.split(model)
        opt = build_optimizer(OptimConfig(lr=1e-4, warmup_steps=1, clip_norm=None), trainable)
        obj = ObjectiveConfig(loss="llada", attention="bidirectional", antithetic=False)
        shardings = step_shardings(mesh, frozen, trainable, opt) if mesh is not None else None
        step = jit_train_step(make_train_step(g, opt, obj), shardings=shardings)
        opt_state = init_opt_state(opt, trainable, shardings[2]) if mesh is not None else opt.init(trainable)
        if mesh is not None:
            data = jax.device_put(data, shardings[3])
        key = jax.random.key(0)
        t0 = time.perf_counter()
        trainable, opt_state, m = step(frozen, trainable, opt_state, data, key, 0)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(1, steps + 1):
            trainable, opt_state, m = step(frozen, trainable, opt_state, data, jax.random.fold_in(key, i), i)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / steps
        prof = None
        if profile:
            import tempfile
            with tempfile.TemporaryDirectory() as tmp:
                prof = profile_steps(step, (frozen, trainable, opt_state, data, key, 0), profile, tmp)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(frozen))
    return {"name": "jaxdiff (jit, JAX)", "step_s": dt, "tokens_per_s": batch * seq / dt,
            "peak_rss_mb": _peak_rss_mb(), "compile_s": compile_s, "loss": float(m["loss"]),
            "params_m": n_params / 1e6, "profile": prof}


def run_torch(batch: int, seq: int, steps: int) -> dict:
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(**CONFIG)
    model = Qwen3MoeForCausalLM(cfg)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mask_id = cfg.vocab_size - 1
    rs = np.random.RandomState(0)
    tokens = torch.tensor(rs.randint(0, cfg.vocab_size - 1, (batch, seq)))
    bidir = torch.zeros((batch, 1, seq, seq))   # additive 4-D mask of zeros: every token sees every token

    def one_step():
        t = torch.rand(batch).clamp_min(1e-3)
        p = t[:, None].expand(batch, seq)
        masked = torch.rand(batch, seq) < p
        noisy = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
        logits = model(input_ids=noisy, attention_mask=bidir).logits
        ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1),
                                               reduction="none").reshape(batch, seq)
        loss = (ce / p)[masked].sum() / (batch * seq)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    one_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    dt = (time.perf_counter() - t0) / steps
    n_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"name": "transformers + peft (torch)", "step_s": dt, "tokens_per_s": batch * seq / dt,
            "peak_rss_mb": _peak_rss_mb(), "loss": loss, "params_m": n_params / 1e6,
            "torch_threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--mesh", action="append", default=[],
                   help="a mesh layout such as fsdp=2,expert=4 (repeat for several); jaxdiff only, fake CPU devices")
    p.add_argument("--dispatch", default="auto", choices=("auto", "gspmd", "all_to_all"), help="MoE dispatch with --mesh")
    p.add_argument("--only", choices=["jaxdiff", "torch"], default=None,
                   help="run one side in this process (prints its JSON line)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="with --only jaxdiff: also trace N steps and print the per-op profile")
    p.add_argument("--one_mesh", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.only:
        if a.only == "jaxdiff":
            r = run_jaxdiff(a.batch, a.seq, a.steps, a.one_mesh, a.dispatch, a.profile)
            prof = r.pop("profile")
            if prof:
                print_profile(prof)
            print(json.dumps(r))
        else:
            print(json.dumps(run_torch(a.batch, a.seq, a.steps)))
        return 0
    if a.mesh:
        return compare_meshes(a)
    results = []
    for side in ("jaxdiff", "torch"):
        out = subprocess.run([sys.executable, __file__, "--only", side, "--batch", str(a.batch), "--seq", str(a.seq),
                              "--steps", str(a.steps)], capture_output=True, text=True, env=os.environ.copy())
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    jd, ref = results
    print(f"Qwen3-MoE {jd['params_m']:.1f}M params, {CONFIG['num_experts']} experts top-{CONFIG['num_experts_per_tok']}, "
          f"batch {a.batch} x seq {a.seq}, LoRA r={RANK} q/k/v/o, LLaDA loss, bidirectional, AdamW, float32, CPU")
    print(f"{'':32s} {'step s':>8s} {'tokens/s':>10s} {'peak RSS MB':>12s}")
    for r in results:
        print(f"{r['name']:32s} {r['step_s']:8.3f} {r['tokens_per_s']:10.1f} {r['peak_rss_mb']:12.0f}")
    print(f"ratio jaxdiff/reference: tokens/s x{jd['tokens_per_s'] / ref['tokens_per_s']:.2f}, "
          f"peak RSS x{jd['peak_rss_mb'] / ref['peak_rss_mb']:.2f} (jaxdiff compile {jd['compile_s']:.1f} s, excluded)")
    return 0


def compare_meshes(a) -> int:
    """One subprocess per layout (and one single-device run), each with as many fake CPU devices as
    its mesh needs; prints step time and tokens/s per layout."""
    import math
    rows = []
    for spec in [""] + a.mesh:
        n = math.prod(int(kv.split("=")[1]) for kv in spec.split(",")) if spec else 1
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        out = subprocess.run([sys.executable, __file__, "--only", "jaxdiff", "--one_mesh", spec, "--dispatch",
                              a.dispatch, "--batch", str(a.batch), "--seq", str(a.seq), "--steps", str(a.steps)],
                             capture_output=True, text=True, env=env)
        if out.returncode:
            print(f"mesh {spec or 'single device'}:\n{out.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows.append((spec or "1 device (no mesh)", json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"Qwen3-MoE {rows[0][1]['params_m']:.1f}M params, {CONFIG['num_experts']} experts top-"
          f"{CONFIG['num_experts_per_tok']}, batch {a.batch} x seq {a.seq}, LoRA r={RANK}, MoE dispatch {a.dispatch}, "
          f"fake CPU devices on this host's cores (relative comparison only)")
    print(f"{'layout':32s} {'step s':>8s} {'tokens/s':>10s} {'vs 1 device':>12s} {'compile s':>10s}")
    base = rows[0][1]["step_s"]
    for name, r in rows:
        print(f"{name:32s} {r['step_s']:8.3f} {r['tokens_per_s']:10.1f} {base / r['step_s']:11.2f}x {r['compile_s']:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
