"""Train-step throughput: jaxdiff's jitted LoRA masked-diffusion step vs transformers + peft.

    python tools/bench_train.py                 # ~50M-param Qwen3-MoE shape, seq 512, CPU
    python tools/bench_train.py --steps 5 --batch 2
    python tools/bench_train.py --rounds 5            # sides alternate 5 times; medians and per-round ratios
    python tools/bench_train.py --only jaxdiff --profile 2   # + per-op profile of 2 steps (jax.profiler)
    python tools/bench_train.py --mesh data=8 --mesh fsdp=2,expert=4 --mesh data=2,expert=2,tensor=2 --batch 8
        # jaxdiff only, one step time per mesh layout (8 fake CPU devices: for relative comparison only)
    python tools/bench_train.py --shape qwen3-0.6b --dtype bfloat16 --batch 8 --seq 2048 \
        --side jaxdiff:cudnn --side jaxdiff:chunked --side torch          # on a GPU: + model TFLOP/s, MFU
    python tools/bench_train.py --shape qwen3-30b-a3b --layers 4 --dtype bfloat16 --batch 4 --seq 2048 \
        --side jaxdiff:cudnn --side jaxdiff:cudnn:ragged --side torch   # tiled experts (the GPU default) vs ragged_dot

Both sides: the same Qwen3 / Qwen3-MoE config and random weights, LoRA r=16 alpha=32 on q/k/v/o, the
LLaDA loss (mask with probability t, CE / t over masked tokens / (B*L)) under bidirectional attention,
AdamW. Each side runs in its own subprocess so peak memory is its own (RSS on CPU, the device
allocator's peak on a GPU). Prints tokens/s, peak memory and the ratios; on a GPU also the model
FLOPs per step and MFU against --peak_tflops.

--shape: bench-moe (the 52M Qwen3-MoE below, the CPU benchmark), qwen3-0.6b (configs/qwen3_0_6b.py's
Qwen3-0.6B config.json) or qwen3-30b-a3b (the verbatim published Qwen3-Coder-30B-A3B-Instruct
config.json), --layers N keeps the first N layers (a slice at the real width). --side picks what
runs, in order: `torch`, or `jaxdiff[:attention_impl[:moe_grouped_impl]]` (ModelOptions values,
e.g. jaxdiff:cudnn, jaxdiff:chunked:tiled); the first jaxdiff side is the one the ratios use.
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
SHAPES = ("bench-moe", "qwen3-0.6b", "qwen3-30b-a3b")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hf_config(shape: str, layers: int | None = None) -> dict:
    """The config.json (as a dict) of a benchmark shape, cut to its first `layers` layers."""
    if shape == "bench-moe":
        hf = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "max_position_embeddings": 32768, "tie_word_embeddings": False, **CONFIG}
    elif shape == "qwen3-0.6b":
        import importlib.util
        spec = importlib.util.spec_from_file_location("qwen3_0_6b", os.path.join(ROOT, "configs", "qwen3_0_6b.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        hf = mod.reference_hf_config()
    elif shape == "qwen3-30b-a3b":
        with open(os.path.join(ROOT, "jaxdiff", "config", "published", "Qwen3-Coder-30B-A3B-Instruct.json")) as f:
            hf = json.load(f)
    else:
        raise ValueError(f"--shape {shape!r}: choose from {SHAPES}")
    if layers:
        hf = {**hf, "num_hidden_layers": layers}
        if "max_window_layers" in hf:
            hf["max_window_layers"] = min(hf["max_window_layers"], layers)
    return hf


def model_flops_per_step(hf: dict, batch: int, seq: int) -> float:
    """What a frozen-base LoRA step must compute (`jaxdiff.model.flops`, the trainer's MFU count too)."""
    from jaxdiff.model import ModelConfig
    from jaxdiff.model.flops import train_flops_per_token
    return batch * seq * train_flops_per_token(ModelConfig.from_hf(hf), seq)


def _jax_peak_mb() -> tuple[float, str]:
    import jax
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, f"{dev.platform} allocator peak"
    return _peak_rss_mb(), "peak RSS"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# profile categories: the first pattern found in an op's name (named scopes, einsum specs) wins
CATEGORIES = (("attention scores (attend)", r"attend|flash_attention|BQKGH|BKGQS"),
              ("MoE experts (grouped matmul)", r"ZRD,ZFD|ZRF|ragged_dot"),
              ("vocabulary loss (lm head)", r"token_stats|_lse_scan|VD->\.\.\.V|NV,VD|ND,NFD"),
              ("projections + LoRA", r"\.\.\.D,FD->\.\.\.F"))


CONTAINERS = ("ThunkExecutor", "SlinkyThreadPool", "ThreadpoolListener", "end: ", "while", "conditional", "cond",
              "call")   # events that enclose other ops' events (a lax.cond's thunk is named cond.N)


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
                profile: int = 0, shape: str = "bench-moe", layers: int | None = None, dtype: str = "float32",
                attention_impl: str = "auto", grouped_impl: str | None = None) -> dict:
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

    cfg = ModelConfig(**CONFIG) if shape == "bench-moe" and not layers else ModelConfig.from_hf(hf_config(shape, layers))
    mesh = make_mesh(dict((k, int(v)) for k, v in (kv.split("=") for kv in mesh_spec.split(",")))) if mesh_spec else None
    options = ModelOptions(moe_dispatch=dispatch, mesh=mesh, attention_impl=attention_impl, moe_grouped_impl=grouped_impl)
    model = build_model(cfg, dtype=jnp.dtype(dtype), options=options)
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
    peak_mb, peak_kind = _jax_peak_mb()
    name = f"jaxdiff (jit, JAX) attention={attention_impl} moe={options.grouped_impl if cfg.is_moe else '-'}"
    return {"name": name, "step_s": dt, "tokens_per_s": batch * seq / dt,
            "peak_mb": peak_mb, "peak_kind": peak_kind, "compile_s": compile_s, "loss": float(m["loss"]),
            "params_m": n_params / 1e6, "backend": jax.default_backend(), "device": str(jax.local_devices()[0].device_kind),
            "versions": f"jax {jax.__version__}", "profile": prof}


def run_torch(batch: int, seq: int, steps: int, shape: str = "bench-moe", layers: int | None = None,
              dtype: str = "float32") -> dict:
    import numpy as np
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tdtype = getattr(torch, dtype)
    if shape == "bench-moe" and not layers:
        cfg = Qwen3MoeConfig(**CONFIG)
        model = Qwen3MoeForCausalLM(cfg)
    else:
        hf = hf_config(shape, layers)
        cfg = AutoConfig.for_model(hf["model_type"], **{k: v for k, v in hf.items() if k != "model_type"})
        with dev:   # initialise on the device: a 30B-A3B slice's experts are billions of parameters
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa", dtype=tdtype)
    model = model.to(device=dev, dtype=tdtype)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    mask_id = cfg.vocab_size - 1
    rs = np.random.RandomState(0)
    tokens = torch.tensor(rs.randint(0, cfg.vocab_size - 1, (batch, seq)), device=dev)
    # additive 4-D mask of zeros: every token sees every token
    bidir = torch.zeros((batch, 1, seq, seq), dtype=tdtype, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def one_step():
        t = torch.rand(batch, device=dev).clamp_min(1e-3)
        p = t[:, None].expand(batch, seq)
        masked = torch.rand(batch, seq, device=dev) < p
        noisy = torch.where(masked, torch.full_like(tokens, mask_id), tokens)
        logits = model(input_ids=noisy, attention_mask=bidir).logits
        ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens.reshape(-1),
                                               reduction="none").reshape(batch, seq)
        loss = (ce / p)[masked].sum() / (batch * seq)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.detach()

    one_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = one_step()
    sync()
    dt = (time.perf_counter() - t0) / steps
    n_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    if dev.type == "cuda":
        peak_mb, peak_kind = torch.cuda.max_memory_allocated() / 2**20, "cuda allocator peak"
    else:
        peak_mb, peak_kind = _peak_rss_mb(), "peak RSS"
    experts = getattr(model.base_model.model.config, "_experts_implementation", None)
    name = "transformers + peft (torch) sdpa" + (f" experts={experts}" if cfg.model_type.endswith("moe") else "")
    return {"name": name, "step_s": dt, "tokens_per_s": batch * seq / dt,
            "peak_mb": peak_mb, "peak_kind": peak_kind, "loss": float(loss), "params_m": n_params / 1e6,
            "torch_threads": torch.get_num_threads(), "backend": dev.type,
            "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__}"}


def _side_args(side: str) -> list[str]:
    name, *rest = side.split(":")
    if name == "torch" and not rest:
        return ["--only", "torch"]
    if name == "jaxdiff" and len(rest) <= 2:
        return ["--only", "jaxdiff"] + (["--attention_impl", rest[0]] if rest else []) + \
            (["--grouped_impl", rest[1]] if len(rest) > 1 else [])
    raise ValueError(f"--side {side!r}: use torch or jaxdiff[:attention_impl[:moe_grouped_impl]]")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1,
                   help="run the sides this many times, alternating, and report each side's median round")
    p.add_argument("--shape", default="bench-moe", choices=SHAPES)
    p.add_argument("--layers", type=int, default=None, help="keep the first N layers of --shape")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="params and activations")
    p.add_argument("--side", action="append", default=[],
                   help="torch | jaxdiff[:attention_impl[:moe_grouped_impl]], repeatable (default: jaxdiff, torch)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the device's dense peak for MFU (default on a GPU: 989, H100/H200 SXM bf16)")
    p.add_argument("--side_timeout", type=float, default=None, help="seconds each side may run (start and compile included)")
    p.add_argument("--json_out", default="", help="append each side's result as a JSON line to this file")
    p.add_argument("--mesh", action="append", default=[],
                   help="a mesh layout such as fsdp=2,expert=4 (repeat for several); jaxdiff only, fake CPU devices")
    p.add_argument("--dispatch", default="auto", choices=("auto", "gspmd", "all_to_all"), help="MoE dispatch with --mesh")
    p.add_argument("--only", choices=["jaxdiff", "torch"], default=None,
                   help="run one side in this process (prints its JSON line)")
    p.add_argument("--attention_impl", default="auto", help="with --only jaxdiff: ModelOptions.attention_impl")
    p.add_argument("--grouped_impl", default=None, help="with --only jaxdiff: ModelOptions.moe_grouped_impl")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="with --only jaxdiff: also trace N steps and print the per-op profile")
    p.add_argument("--one_mesh", default="", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    shape_args = ["--shape", a.shape, "--dtype", a.dtype] + (["--layers", str(a.layers)] if a.layers else [])
    if a.only:
        if a.only == "jaxdiff":
            r = run_jaxdiff(a.batch, a.seq, a.steps, a.one_mesh, a.dispatch, a.profile, a.shape, a.layers, a.dtype,
                            a.attention_impl, a.grouped_impl)
            prof = r.pop("profile")
            if prof:
                print_profile(prof)
            print(json.dumps(r))
        else:
            print(json.dumps(run_torch(a.batch, a.seq, a.steps, a.shape, a.layers, a.dtype)))
        return 0
    if a.mesh:
        return compare_meshes(a)
    hf = hf_config(a.shape, a.layers)
    flops = model_flops_per_step(hf, a.batch, a.seq)
    sides = a.side or ["jaxdiff", "torch"]
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for rnd in range(a.rounds):   # the sides alternate within each round: they share the machine's drift
        for side in sides:
            r = _run_side(a, side, shape_args, flops, hf)
            runs[side].append(r)   # None for a failed run: rounds stay aligned across the sides
            if r is None:
                continue
            tag = f"round {rnd + 1}/{a.rounds} " if a.rounds > 1 else ""
            print(f"  {tag}{side}: {r['step_s']:.4f} s/step ({r['wall_s']:.0f} s with start and compile)", file=sys.stderr)
    results = [_median_run([r for r in rs if r]) for rs in runs.values() if any(rs)]
    if not results:
        return 1
    r0 = results[0]
    print(f"{a.shape} ({r0['layers']} layers, {r0['params_m']:.1f}M frozen params), batch {a.batch} x seq {a.seq}, "
          f"{a.dtype}, LoRA r={RANK} q/k/v/o, LLaDA loss, bidirectional, AdamW; {r0['device']}; "
          f"{flops / 1e12:.2f} model TFLOP per step (frozen base: 4N + attention)")
    print(f"{'':58s} {'step s':>8s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak MB':>9s}")
    for r in results:
        mfu = f"{100 * r['mfu']:5.1f}%" if r["mfu"] is not None else "     -"
        print(f"{r['name'][:58]:58s} {r['step_s']:8.4f} {r['tokens_per_s']:10.1f} "
              f"{flops / r['step_s'] / 1e12:8.2f} {mfu} {r['peak_mb']:9.0f}")
    jd = next((r for r in results if r["side"].startswith("jaxdiff")), None)
    ref = next((r for r in results if r["side"] == "torch"), None)
    if jd and ref:
        print(f"ratio jaxdiff/reference: tokens/s x{jd['tokens_per_s'] / ref['tokens_per_s']:.2f}, "
              f"peak memory x{jd['peak_mb'] / ref['peak_mb']:.2f} ({jd['peak_kind']} vs {ref['peak_kind']}; "
              f"jaxdiff compile {jd['compile_s']:.1f} s, excluded)")
        if a.rounds > 1:
            per_round = [r["tokens_per_s"] / q["tokens_per_s"] if r and q else None
                         for r, q in zip(runs[jd["side"]], runs["torch"])]
            print(f"{a.rounds} rounds (medians above): tokens/s ratio per round "
                  + ", ".join(f"x{x:.2f}" if x else "failed" for x in per_round)
                  + f"; step s {jd['side']} {jd['step_range']}, torch {ref['step_range']}")
    return 0 if all(all(rs) for rs in runs.values()) else 1


def _run_side(a, side: str, shape_args: list[str], flops: float, hf: dict) -> dict | None:
    """One side's run in its own subprocess -> its result (None when it failed or timed out)."""
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, __file__, *_side_args(side), "--batch", str(a.batch), "--seq",
                              str(a.seq), "--steps", str(a.steps), *shape_args], capture_output=True, text=True,
                             env=os.environ.copy(), timeout=a.side_timeout)
    except subprocess.TimeoutExpired:
        print(f"side {side} ran past --side_timeout {a.side_timeout:.0f} s: skipped", file=sys.stderr)
        return None
    if out.returncode:
        print(f"side {side} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
        return None
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r.update(side=side, shape=a.shape, layers=hf["num_hidden_layers"], batch=a.batch, seq=a.seq, dtype=a.dtype,
             model_tflops_per_step=flops / 1e12, wall_s=time.perf_counter() - t0)
    peak = a.peak_tflops or (989.0 if r.get("backend") in ("gpu", "cuda") else None)
    r["mfu"] = flops / r["step_s"] / (peak * 1e12) if peak else None
    if a.json_out:
        with open(a.json_out, "a") as f:
            f.write(json.dumps(r) + "\n")
    return r


def _median_run(rs: list[dict]) -> dict:
    """The run with the median step time of one side's rounds (the lower middle of an even count),
    with the range of all its rounds' step times."""
    mid = sorted(rs, key=lambda r: r["step_s"])[(len(rs) - 1) // 2]
    steps = [r["step_s"] for r in rs]
    return {**mid, "step_range": f"{min(steps):.3f}-{max(steps):.3f}"}


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
