"""The memory planner: exact per-device bytes of weights, adapters, optimizer state and KV cache
against real sharded arrays on the 8 fake CPU devices, the 30B config's shardings on a 64-device
abstract mesh, the activation estimate against JAX's and XLA's own numbers, and bad input."""
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from configs import qwen3_coder_30b_a3b
from jaxdiff.config import defaults as base
from jaxdiff.model import KVCache
from jaxdiff.parallel import make_mesh, replicated_report
from jaxdiff.train import plan as plan_lib
from jaxdiff.train import config as cfg_lib
from jaxdiff.train import state as st
from jaxdiff.train.optim import build_optimizer
from jaxdiff.train.step import init_opt_state, loss_fn, make_train_step, step_shardings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH_30B = {"data": 1, "fsdp": 8, "expert": 8, "tensor": 1}


@pytest.fixture(scope="module")
def plan_30b():
    return plan_lib.plan_memory(qwen3_coder_30b_a3b.get_config(), mesh=MESH_30B, batch=64, seq=2048,
                                gen_length=512, hf_config=qwen3_coder_30b_a3b.reference_hf_config())


def small_config(*, moe=True, layers=2):
    """A LoRA run on a small Qwen3-MoE-shaped model with all three heads."""
    c = base.get_config()
    c.model.init = base.model_init(hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                   num_experts=8 if moe else 0, num_experts_per_tok=2 if moe else 0,
                                   moe_intermediate_size=64 if moe else 0)
    c.tokenizer.vocab_size = 1000               # 1024 rows: the trainer rounds up to 64
    c.lora.full_training = False
    c.lora.diffusion = base.lora_head(rank=8, targets=("q_proj", "o_proj", r"experts\.(gate|up)_proj"))
    c.objective.ar_weight, c.objective.length_weight, c.objective.sft = 0.5, 0.1, True
    c.data.kind = "sft"
    return c


def _per_device(tree) -> int:
    """Bytes one device holds, from real arrays: every shard's buffer, over the 8 devices."""
    return sum(sum(s.data.nbytes for s in a.addressable_shards) for a in jax.tree.leaves(tree)) // 8


# ----------------------------------------------------------------------------- exact parts
@pytest.mark.parametrize("fp8", [False, True])
def test_small_plan_is_exact_against_real_sharded_arrays(fp8):
    c = small_config()
    mesh_shape = {"data": 1, "fsdp": 2, "expert": 4, "tensor": 1}
    plan = plan_lib.plan_memory(c, mesh=mesh_shape, batch=8, seq=64, gen_length=16, fp8=fp8)
    mcfg, dtype = plan_lib.model_config(c, fp8=fp8)
    assert (mcfg.fp8_block_size is not None) == fp8 and any(x.dtype == jnp.float8_e4m3fn for x in plan.frozen) == fp8
    model = plan_lib.build_train_model(c, mcfg, dtype)
    _, frozen, trainable = st.split(model)
    mesh = make_mesh(mesh_shape)
    opt = build_optimizer(cfg_lib.optimizer(c), trainable)
    f_sh, t_sh, o_sh, _ = step_shardings(mesh, frozen, trainable, opt)
    frozen, trainable = jax.device_put(frozen, f_sh), jax.device_put(trainable, t_sh)
    opt_state = init_opt_state(opt, trainable, o_sh)
    rows = plan.train_rows()
    assert rows["base weights (frozen)"] == _per_device(frozen)
    assert rows["trainable (LoRA, length head, mask row)"] == _per_device(trainable)
    assert rows["optimizer state"] == _per_device(opt_state)
    # Sharding really splits the base here (experts 8 ways, every D-wide weight over fsdp=2).
    assert 2 * rows["base weights (frozen)"] <= plan_lib.total(plan.frozen, "global_bytes")


def test_kv_cache_matches_a_real_cache():
    c = small_config()
    plan = plan_lib.plan_memory(c, mesh={"fsdp": 2, "expert": 4}, batch=8, seq=64, sample_batch=8,
                                prompt_length=40, gen_length=24)
    cfg, dtype = plan_lib.model_config(c)
    cache = KVCache.empty(cfg, 8, 64, dtype=dtype)
    kv = cfg.num_hidden_layers * 8 * (40 + 24) * cfg.num_key_value_heads * cfg.head_dim * 2 * dtype.itemsize
    by_name = {x.name: x for x in plan.kv_cache}
    assert by_name["k"].global_bytes + by_name["v"].global_bytes == kv
    assert plan_lib.total(plan.kv_cache, "global_bytes") == sum(x.nbytes for x in jax.tree.leaves(cache))
    mesh = make_mesh({"fsdp": 2, "expert": 4})
    placed = {name: jax.device_put(getattr(cache, name), NamedSharding(mesh, by_name[name].spec)) for name in by_name}
    assert plan_lib.total(plan.kv_cache) == _per_device(placed)
    assert by_name["k"].device_bytes * 8 == by_name["k"].global_bytes      # batch 8 over fsdp x expert


# ----------------------------------------------------------------------------- the 30B config
def test_30b_expert_weights_are_split_over_the_expert_and_fsdp_axes(plan_30b):
    assert plan_30b.model.fp8_block_size == (128, 128)
    n_base = sum(math.prod(x.shape) for x in plan_30b.frozen if x.dtype != np.float32 or len(x.shape) > 1)
    assert abs(n_base / 1e9 - 30.5) < 0.6
    experts = [x for x in plan_30b.frozen if ".experts." in x.name]
    assert len(experts) == 48 * 3 * 2    # gate/up/down weights and scales in every layer
    for x in experts:
        ways = 64 if x.name.endswith(".weight") else 8   # weights: E over expert, D over fsdp; scales: E only
        assert x.device_bytes * ways == x.global_bytes, (x.name, x.spec)
    assert plan_30b.devices == 64


def test_30b_no_large_base_weight_is_replicated(plan_30b):
    mesh = plan_lib.abstract_mesh(MESH_30B)
    abstract = {x.name: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, x.spec))
                for x in plan_30b.frozen}
    assert replicated_report(abstract) == []
    assert plan_lib.replicated_leaves(plan_30b.frozen) == []
    # The check can fail: on a mesh with no fsdp the embedding and lm_head are whole on every device.
    expert_only = plan_lib.plan_memory(qwen3_coder_30b_a3b.get_config(), mesh={"expert": 8}, batch=8, seq=256,
                                       gen_length=64, hf_config=qwen3_coder_30b_a3b.reference_hf_config())
    names = {x.name for x in plan_lib.replicated_leaves(expert_only.frozen)}
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= names
    assert not any(".experts." in n for n in names)


def test_30b_totals_over_devices_cover_the_unsharded_model(plan_30b):
    for leaves in (plan_30b.frozen, plan_30b.trainable, plan_30b.optimizer, plan_30b.kv_cache):
        assert plan_30b.devices * plan_lib.total(leaves) >= plan_lib.total(leaves, "global_bytes")
    # Adam keeps two float32 moments per trainable float32 leaf, sharded like the leaf.
    assert abs(plan_lib.total(plan_30b.optimizer) - 2 * plan_lib.total(plan_30b.trainable)) < 1 << 20


def test_shipped_30b_config_fits_its_stated_hardware():
    """configs/qwen3_coder_30b_a3b.py as shipped (its batch, length, remat, capacity factor) on its
    stated hardware, one node of 8 x H100 80GB (mesh data=-1, expert=8 over 8 devices): train and
    sample fit. The check can fail: the same plan on 24 GB devices does not fit."""
    c = qwen3_coder_30b_a3b.get_config()
    mesh = plan_lib.resolve_mesh(dict(c.mesh), 8)
    plan = plan_lib.plan_memory(c, mesh=mesh, hf_config=qwen3_coder_30b_a3b.reference_hf_config(), device_memory_gb=80)
    assert plan.fits("train") and plan.fits("sample"), plan.format()
    small = plan_lib.plan_memory(c, mesh=mesh, hf_config=qwen3_coder_30b_a3b.reference_hf_config(), device_memory_gb=24)
    assert not small.fits("train")


def test_fp8_flag_halves_the_base(plan_30b):
    bf16 = plan_lib.plan_memory(qwen3_coder_30b_a3b.get_config(), mesh=MESH_30B, batch=64, seq=2048,
                                gen_length=512, fp8=False, hf_config=qwen3_coder_30b_a3b.reference_hf_config())
    assert bf16.model.fp8_block_size is None and bf16.dtype == jnp.bfloat16
    ratio = plan_lib.total(bf16.frozen) / plan_lib.total(plan_30b.frozen)
    assert 1.7 < ratio < 2.0    # FP8 is 1 byte a weight plus float32 scales and a few bf16 modules


# ----------------------------------------------------------------------------- activations
def _abstract_step_inputs(c, remat, batch, seq):
    mcfg, dtype = plan_lib.model_config(c)
    graphdef, frozen, trainable = plan_lib.abstract_train_state(c, mcfg, dtype, remat)
    b = {"tokens": jax.ShapeDtypeStruct((batch, seq), jnp.int32), "valid": jax.ShapeDtypeStruct((batch, seq), bool),
         "prompt_lengths": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    return graphdef, frozen, trainable, b, jax.ShapeDtypeStruct((2,), jnp.uint32)


@pytest.mark.parametrize("moe", [False, True])
@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_saved_residual_estimate_is_within_1_5x_of_jax(moe, remat):
    """The estimate of what the forward keeps for the backward, against the residuals JAX lists."""
    from jax._src.ad_checkpoint import saved_residuals

    c = small_config(moe=moe, layers=6)
    c.objective.ar_weight, c.objective.length_weight = 0.0, 0.0
    graphdef, frozen, trainable, batch, key = _abstract_step_inputs(c, remat, 2, 512)
    obj = cfg_lib.objective(c)
    res = saved_residuals(lambda t, f, b, k: loss_fn(t, f, graphdef, b, k, 0, obj, False)[0],
                          trainable, frozen, batch, key)
    jax_bytes = sum(math.prod(a.shape) * a.dtype.itemsize for a, why in res if "argument" not in why)
    plan = plan_lib.plan_memory(c, mesh={}, batch=2, seq=512, remat=remat)
    vocab_saved, _ = plan_lib.vocab_loss_bytes(plan.model, 2 * 512, 1, obj.vocab_chunk, 4,
                                               lora_rank=c.lora.diffusion.rank,   # the chunk scan's residuals
                                               one_pass=plan_lib.vocab_one_pass(c))
    estimate = plan.activations["activations: saved residuals"] + vocab_saved
    assert 1 / 1.5 < estimate / jax_bytes < 1.5, (estimate, jax_bytes)


@pytest.mark.parametrize("moe", [False, True])
def test_no_remat_estimate_is_within_1_5x_of_xla(moe):
    """Without remat the whole activation estimate against XLA's buffer assignment of the jitted
    step on CPU. (With remat XLA:CPU schedules the recomputation early and its peak does not drop,
    so only the residual list above can check those policies here.)"""
    c = small_config(moe=moe, layers=6)
    c.objective.ar_weight, c.objective.length_weight = 0.0, 0.0
    graphdef, frozen, trainable, batch, key = _abstract_step_inputs(c, "none", 2, 512)
    opt = build_optimizer(cfg_lib.optimizer(c), trainable)
    step = make_train_step(graphdef, opt, cfg_lib.objective(c))
    compiled = jax.jit(step).lower(frozen, trainable, jax.eval_shape(opt.init, trainable), batch, key,
                                   jnp.int32(0)).compile()
    xla = compiled.memory_analysis().temp_size_in_bytes
    estimate = sum(plan_lib.plan_memory(c, mesh={}, batch=2, seq=512, remat="none").activations.values())
    assert 1 / 1.5 < estimate / xla < 1.5, (estimate, xla)


# ----------------------------------------------------------------------------- per-layer slope at 30B-A3B width
# Every mesh runs the shipped config's capacity factor (the training default). The dropless
# dispatch is not checked here: XLA:CPU lowers its grouped kernel by tiles (each tile gathers its
# expert's weights), buffers a GPU's ragged_dot does not allocate.
SLOPE_MESHES = ({"expert": 8}, {"fsdp": 4, "expert": 2}, {"data": 2, "fsdp": 2, "expert": 2})
SLOPE_BATCH, SLOPE_SEQ = 16, 256
# The slope between 2 and 3 layers: a 1-layer model's only layer is both the first and the last, and
# where XLA puts that model's peak (the loss's chunk working set or the layer's backward) is not
# where it puts a deeper model's; from 1 to 2 layers the expert=8 slope moved by 55 MB when the
# vocabulary loss's backward working set shrank (2 -> 3 layers: 799 MB, 1 -> 2: 839 MB).
SLOPE_LAYERS = (2, 3)
# XLA:CPU's buffer assignment comes before LLVM code generation; without LLVM's expensive passes
# the six compiles take half the time and assign the same buffers.
FAST_COMPILE = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 " \
               "--xla_llvm_disable_expensive_passes=true"
_COMPILE_SLICES = """
import json, sys
from tests.train.test_plan_memory import slice_config
from jaxdiff.train import plan
out = []
for mesh in json.loads(sys.argv[1]):
    for layers in %r:
        c, hf = slice_config(mesh)
        mcfg, dtype = plan.model_config(c, dict(hf, num_hidden_layers=layers), fp8=False)
        out.append(plan.compiled_step_bytes(c, mcfg, dtype, batch=%d, seq=%d))
print(json.dumps(out))
""" % (SLOPE_LAYERS, SLOPE_BATCH, SLOPE_SEQ)


def slice_config(mesh):
    """The shipped 30B config with the published 30B-A3B architecture (layers set by the caller),
    no remat (XLA:CPU does not lower its peak with remat, see above), the diffusion head only (one
    forward and backward per layer keeps the compile short), no stage-2 edits, on `mesh` (and its "capacity_factor",
    else the config's). Float32: XLA:CPU has no bf16 dot and converts bf16 operands to float32
    copies (the whole lm_head, every expert weight), buffers a GPU never allocates. Meshes with
    expert > 1 run the all-to-all dispatch, the same program on every backend; expert = 1 would
    take the grouped path, which XLA:CPU lowers by tiles unlike the GPU's ragged_dot."""
    c = qwen3_coder_30b_a3b.get_config()
    c.model.remat = False
    c.model.dtype = "float32"
    if "capacity_factor" in mesh:
        c.model.moe_capacity_factor = mesh["capacity_factor"]
    c.objective.ar_weight, c.objective.length_weight = 0.0, 0.0
    c.objective.stage2_step = -1    # the edit corruption is no part of a layer; it only adds compile time
    for a in ("data", "fsdp", "expert", "tensor"):
        c.mesh[a] = mesh.get(a, 1)
    return c, qwen3_coder_30b_a3b.reference_hf_config()


def test_planner_per_layer_slope_is_within_15_percent_of_xla_at_30b_width():
    """bytes(3 layers) - bytes(2 layers) per device: the planner's train total against XLA's buffer
    assignment (arguments + outputs + temps - donated) of the real jitted train step, compiled
    from abstract arguments on 8 CPU devices, at the real 30B-A3B width (D 2048, 128 experts top-8,
    F 768, 32 heads), on three meshes. The slope holds everything a layer adds: its weights,
    adapters, gradients and optimizer state, its saved activations and its MoE dispatch buffers."""
    import json

    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": FAST_COMPILE}
    run = subprocess.run([sys.executable, "-c", _COMPILE_SLICES, json.dumps(SLOPE_MESHES)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    compiled = json.loads(run.stdout.strip().splitlines()[-1])
    report = []
    for i, mesh in enumerate(SLOPE_MESHES):
        c, hf = slice_config(mesh)
        axes = {a: n for a, n in mesh.items() if a != "capacity_factor"}
        planned = [plan_lib.plan_memory(c, mesh=axes, batch=SLOPE_BATCH, seq=SLOPE_SEQ, gen_length=64, fp8=False,
                                        hf_config=dict(hf, num_hidden_layers=n)).train_total() for n in SLOPE_LAYERS]
        xla = compiled[2 * i + 1]["total"] - compiled[2 * i]["total"]
        report.append((mesh, planned[1] - planned[0], xla))
    print("per-layer slope, planner vs XLA (MB):",
          [(m, round(p / 1e6, 1), round(x / 1e6, 1), round(p / x, 3)) for m, p, x in report])
    for mesh, p, x in report:
        assert 0.85 <= p / x <= 1.15, (mesh, p, x)


# ----------------------------------------------------------------------------- bad input
def test_bad_mesh_and_settings_are_named():
    with pytest.raises(plan_lib.PlanError, match="--mesh: unknown axis 'model'"):
        plan_lib.parse_mesh("data=2,model=4")
    with pytest.raises(plan_lib.PlanError, match=r"--mesh .* has 64 devices, but --devices=8"):
        plan_lib.parse_mesh("fsdp=8,expert=8", devices=8)
    with pytest.raises(plan_lib.PlanError, match="--devices is needed"):
        plan_lib.parse_mesh("data=-1,expert=8")
    assert plan_lib.parse_mesh("data=-1,expert=8", devices=64)["data"] == 8
    c = small_config()
    with pytest.raises(plan_lib.PlanError, match="--batch=6 is not divisible"):
        plan_lib.plan_memory(c, mesh={"fsdp": 2, "expert": 4}, batch=6)
    with pytest.raises(plan_lib.PlanError, match="--remat='some'"):
        plan_lib.plan_memory(c, mesh={}, remat="some")
    with pytest.raises(plan_lib.PlanError, match="--gen_length=512 is longer than --seq=64"):
        plan_lib.plan_memory(c, mesh={}, seq=64, gen_length=512)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "tools/plan_memory.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)


def test_cli_prints_the_plan_and_refuses_an_unknown_config_key():
    out = _cli("--config", "configs/qwen3_coder_30b_a3b.py", "--mesh", "data=1,fsdp=8,expert=8", "--batch", "64",
               "--seq", "2048", "--gen_length", "512", "--device_memory_gb", "80")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "64 devices" in out.stdout and "block-FP8" in out.stdout and out.stdout.count(": fits") == 2
    assert "activations: an estimate" in out.stdout
    bad = _cli("--config", "configs/qwen3_coder_30b_a3b.py", "--mesh", "expert=8", "--config.model.rematt=True")
    assert bad.returncode == 2 and "--config.model.rematt: the config has no key 'rematt' (did you mean 'remat'?)" in bad.stderr
    tight = _cli("--config", "configs/qwen3_coder_30b_a3b.py", "--mesh", "expert=1", "--batch", "8", "--seq", "4096",
                 "--nofp8", "--device_memory_gb", "80")
    assert tight.returncode == 1 and "does NOT fit" in tight.stdout
