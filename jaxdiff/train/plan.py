"""Per-device memory plan of a training config on a mesh: the frozen base, the trainable leaves,
their gradients and optimizer state, the activations of one train step, and the KV cache and
working set of sampling, against a device's memory.

Exact parts: the model is built abstractly (`nnx.eval_shape`: no memory) by the builder the
trainer uses (mask token, LoRA heads, length head), split the way the trainer splits it, and the
optimizer state is `jax.eval_shape` of the trainer's optimizer init. Each leaf's bytes on one
device are its shard shape under the NamedSharding the trainer would give it, taken on an
`AbstractMesh`, so a 64-device plan runs on a laptop. The KV cache is exact for its layout.

Estimated parts: activations (see `activation_estimate`) follow the model shape, the remat policy
and the batch sharding; tests hold them within a stated factor of XLA's own number for small
configs, and CI holds their per-layer slope within 15% of XLA's buffer assignment of the real
train step at the 30B-A3B width (tests/train/test_plan_memory.py). Tokens stay sharded over the
batch axes inside MoE layers; with the all-to-all dispatch (`model.moe_dispatch` auto / all_to_all
with mesh.expert > 1) every MoE layer holds E x C x D send / receive buffers and E x C x F expert
intermediates per device, C = `expert_parallel.capacity` of the device's tokens
(`model.moe_capacity_factor`; 0 = dropless: n x T x min(k, E / n) rows instead of E x C; that
count is not checked against XLA, whose CPU tiled kernel adds per-tile weight copies). Not checked against a
compiled peak: remat (XLA:CPU does not lower its peak for it) and bf16 (XLA:CPU copies bf16 dot
operands to float32), so the slope check runs in float32 without remat.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding, PartitionSpec as P

from jaxdiff import builder
from jaxdiff.diffusion.losses import vocab_chunking
from jaxdiff.config import schema
from jaxdiff.model import Qwen3
from jaxdiff.model.config import ModelConfig
from jaxdiff.model.options import ModelOptions
from jaxdiff.model.expert_parallel import capacity, dropless_rows
from jaxdiff.parallel import axes as ax
from jaxdiff.parallel.mesh import logical_to_spec
from jaxdiff.train import config as cfg_lib
from jaxdiff.train import state as st
from jaxdiff.train.optim import build_optimizer
from jaxdiff.train.step import step_shardings

REMAT = ("full", "none", "dots")
# Modules the Qwen3 FP8 releases keep in bf16 (their `modules_to_not_convert`), for `fp8=True` on
# a config whose source has no quantization_config.
FP8_SKIP = ("lm_head", "mlp.gate")
FP8_BLOCK = (128, 128)
GB = 10 ** 9   # device memory is sold in decimal GB ("H100 80GB"); the plan reports in GB too


class PlanError(ValueError):
    """Bad planner input; the message names the flag or config field."""


# ----------------------------------------------------------------------------- mesh
def parse_mesh(text: str, devices: int | None = None) -> dict[str, int]:
    """"data=1,fsdp=8,expert=8" -> a size for every mesh axis (missing = 1; one may be -1 = the
    rest of `devices`). Errors name --mesh / --devices."""
    sizes = {a: 1 for a in ax.MESH_AXES}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = part.partition("=")
        if not eq:
            raise PlanError(f"--mesh: {part!r} is not axis=size (e.g. --mesh data=1,fsdp=8,expert=8)")
        if name not in sizes:
            raise PlanError(f"--mesh: unknown axis {name!r}; axes are {', '.join(ax.MESH_AXES)}")
        try:
            sizes[name] = int(value)
        except ValueError:
            raise PlanError(f"--mesh: size of axis {name!r} must be an integer, got {value!r}") from None
        if sizes[name] == 0 or sizes[name] < -1:
            raise PlanError(f"--mesh: axis {name!r} has size {sizes[name]}; sizes are >= 1 (or -1 = the rest)")
    return resolve_mesh(sizes, devices)


def resolve_mesh(sizes: Mapping[str, int], devices: int | None = None) -> dict[str, int]:
    sizes = {a: int(sizes.get(a, 1)) for a in ax.MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if len(free) > 1:
        raise PlanError(f"--mesh: at most one axis may be -1, got {free}")
    if free:
        if devices is None:
            raise PlanError(f"--mesh: axis {free[0]!r} is -1 (the rest), so --devices is needed")
        if devices % fixed:
            raise PlanError(f"--devices={devices} is not divisible by the fixed --mesh axes' product {fixed}")
        sizes[free[0]] = devices // fixed
    if devices is not None and math.prod(sizes.values()) != devices:
        raise PlanError(f"--mesh {format_mesh(sizes)} has {math.prod(sizes.values())} devices, "
                        f"but --devices={devices}")
    return sizes


def format_mesh(sizes: Mapping[str, int]) -> str:
    return ",".join(f"{a}={sizes[a]}" for a in ax.MESH_AXES)


def abstract_mesh(sizes: Mapping[str, int]) -> AbstractMesh:
    """A mesh of the given shape with no devices behind it: shardings and shard shapes only."""
    return AbstractMesh(tuple(sizes[a] for a in ax.MESH_AXES), ax.MESH_AXES,
                        axis_types=(AxisType.Auto,) * len(ax.MESH_AXES))


# ----------------------------------------------------------------------------- per-leaf bytes
@dataclasses.dataclass(frozen=True)
class Leaf:
    """One array: its global shape and dtype, its PartitionSpec and the bytes one device holds."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    spec: P
    global_bytes: int
    device_bytes: int

    @property
    def replicated(self) -> bool:
        return self.global_bytes == self.device_bytes


def leaf(name: str, shape: Sequence[int], dtype, sharding: NamedSharding) -> Leaf:
    shape = tuple(int(s) for s in shape)
    itemsize = np.dtype(dtype).itemsize
    return Leaf(name, shape, np.dtype(dtype), sharding.spec, math.prod(shape) * itemsize,
                math.prod(sharding.shard_shape(shape)) * itemsize)


def _path(path) -> str:
    return ".".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)


def state_leaves(state: nnx.State, mesh, rules=None) -> list[Leaf]:
    """Every variable of an NNX state, sharded by its logical `axes` (as `train.state` does)."""
    out = []
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("axes") or (None,) * len(var.shape)
        spec = logical_to_spec(axes, var.shape, mesh, rules)
        out.append(leaf(_path(path), var.shape, var.dtype, NamedSharding(mesh, spec)))
    return out


def tree_leaves(tree, shardings) -> list[Leaf]:
    """Leaves of a pytree of ShapeDtypeStructs beside a same-structured tree of shardings."""
    flat = jax.tree_util.tree_leaves_with_path(tree)
    shs = jax.tree.leaves(shardings)
    assert len(flat) == len(shs), (len(flat), len(shs))
    return [leaf(_path(p), x.shape, x.dtype, s) for (p, x), s in zip(flat, shs)]


def total(leaves: Sequence[Leaf], which: str = "device_bytes") -> int:
    return sum(getattr(x, which) for x in leaves)


# ----------------------------------------------------------------------------- the model
def model_config(c, hf_config: Mapping | None = None, fp8: bool | None = None) -> tuple[ModelConfig, jnp.dtype]:
    """The ModelConfig and compute dtype the trainer would use for config `c`.

    The architecture comes from `config.model.checkpoint`'s config.json when one is set, else
    from `hf_config` (a config module's `reference_hf_config()`), else from `config.model.init`
    (a from-scratch model; vocab = config.tokenizer.vocab_size rounded up to 64, as the trainer
    rounds its tokenizer's length). fp8 None keeps what the source says; True plans block-FP8
    weights (128 x 128 blocks), False plain weights. The dtype follows `jaxdiff.load_model`:
    config.model.dtype when set, else bf16 for an FP8 base, else the checkpoint's torch_dtype."""
    source = None
    if c.model.checkpoint:
        source = ModelConfig.from_hf(c.model.checkpoint)
    elif hf_config is not None:
        source = ModelConfig.from_hf(dict(hf_config), source="reference_hf_config()")
    if source is None:
        mcfg = builder.model_config_from_init(c.model.init, builder.scratch_vocab(int(c.tokenizer.vocab_size)),
                                              None, None)
        dtype = jnp.dtype(c.model.dtype or "float32")
        if fp8:
            mcfg = mcfg.replace(fp8_block_size=FP8_BLOCK, fp8_skip_modules=FP8_SKIP)
        return mcfg, dtype
    if c.model.dtype and fp8 is None:
        fp8 = False  # load_model(dtype=...) dequantizes an FP8 base
    if fp8 is False:
        source = source.replace(fp8_block_size=None, fp8_skip_modules=())
    elif fp8 and source.fp8_block_size is None:
        source = source.replace(fp8_block_size=FP8_BLOCK, fp8_skip_modules=FP8_SKIP)
    if c.model.dtype:
        return source, jnp.dtype(c.model.dtype)
    if source.fp8_block_size is not None:
        return source, jnp.dtype(jnp.bfloat16)
    stored = json_dtype(source)
    return source, stored


def json_dtype(cfg: ModelConfig) -> jnp.dtype:
    import json

    d = json.loads(cfg.hf_json) if cfg.hf_json else {}
    return jnp.dtype(d.get("torch_dtype") or d.get("dtype") or "bfloat16")


active_heads = schema.active_heads   # which forward passes a train step runs


def _options(c, remat: str | None):
    options = builder.model_options(c)
    if remat is not None:
        options = options.replace(remat=remat != "none", remat_policy="dots" if remat == "dots" else "full")
    return options


def build_train_model(c, mcfg: ModelConfig, dtype, remat: str | None = None) -> Qwen3:
    """The model the trainer builds for `c` (the builder's), randomly initialised, with `remat`
    (one of REMAT; None: the config's) setting activation checkpointing."""
    return builder.model_for_architecture(c, mcfg, dtype, options=_options(c, remat))


def abstract_train_state(c, mcfg: ModelConfig, dtype, remat: str | None = None):
    """(graphdef, frozen, trainable) of `build_train_model` with ShapeDtypeStruct leaves (no
    memory), split the way the trainer splits it."""
    abstract = builder.abstract_model_from_config(c, mcfg, dtype, options=_options(c, remat))
    return st.split(abstract, full_training=c.lora.full_training)


# ----------------------------------------------------------------------------- activations
def _batch_shards(mesh, batch: int) -> int:
    spec = logical_to_spec((ax.BATCH,), (batch,), mesh)
    names = spec[0] or ()
    names = (names,) if isinstance(names, str) else names
    return math.prod(mesh.shape[n] for n in names)


def _tensor_shards(mesh, dim: int) -> int:
    t = mesh.shape["tensor"]
    return t if t > 1 and dim % t == 0 else 1


def layer_bytes_per_token(cfg: ModelConfig, layer: int, keys: int, itemsize: int, mesh,
                          dispatch: bool = False) -> dict[str, float]:
    """Bytes one token's intermediates take in one decoder layer, by kind, as saved for the
    backward without remat: "input" (the layer input), "dots" (outputs of matmuls: what
    `dots_with_no_batch_dims_saveable` keeps: projections; the attention tiles' and the tiled MoE experts' batched matmuls are recomputed), "other" (norms in float32, RoPE, softmax, SwiGLU, MoE gathers).
    `keys` is how many keys a query attends over; the chunked attention path (flash.py) keeps no
    scores for the backward (it recomputes each tile), only a float32 max and sum per query and head.
    Head- and FFN-wide parts are divided by the tensor axis when it divides them. `dispatch`:
    MoE layers run the all-to-all dispatch, whose expert FFN works on capacity slots, not on
    tokens (`dispatch_bytes`); only the router and the combine stay per token here."""
    d, n, k, h, b = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, itemsize
    th = _tensor_shards(mesh, n * h)
    dots = ((n + 2 * k) * h * b            # q, k, v projections
            + n * h * b) / th + d * b       # attention output; o_proj output
    other = (2 * d * (4 + b)                # two RMSNorms: float32 copy + output
             + (n + k) * h * (4 + b + b) / th   # q/k norms and RoPE
             + n * 2 * 4 / th               # the chunked attention's softmax max and sum per head
             + 2 * d * b)                   # residual adds
    if cfg.layer_is_moe(layer) and dispatch:
        e, top = cfg.num_experts, cfg.num_experts_per_tok
        dots += e * b                                   # router
        other += e * 4 + (2 * top * d + d) * b          # probs; combined rows, weighted rows, output
    elif cfg.layer_is_moe(layer):
        e, top, f = cfg.num_experts, cfg.num_experts_per_tok, cfg.moe_intermediate_size
        tf = _tensor_shards(mesh, f)
        dots += e * b + (2 * top * f / tf + top * d) * b           # router; gate/up; down per assignment
        other += e * 4 + (2 * top * f / tf + 2 * top * d + d) * b  # probs; silu, product; gathered rows,
        #                                                             weighted rows, combined output
    else:
        f = cfg.intermediate_size
        tf = _tensor_shards(mesh, f)
        dots += (2 * f / tf + d) * b
        other += 2 * f / tf * b
    return {"input": d * b, "dots": dots, "other": other}


# The all-to-all dispatch per MoE layer and pass, in units of X = [E, C, D] and Y = [E, C, F/tensor]
# in the compute dtype. Saved for the backward without remat: 1.5 X + 4 Y, fitted to XLA's buffer
# assignment of the real train step at the 30B-A3B width (float32, CPU, 8 devices, expert=8): the
# per-layer slope at dropless C = 512 and at capacity C = 40 gives 3.19 MB per slot, F = 768 against
# F = 1536 gives 4.0 Y: gate, up, silu(gate) and their product; the expert output's return trip and
# the combine's gather source. Working set of one layer's backward: the cotangents of one send /
# receive pair and of the F-wide intermediates.
DISPATCH_SAVED = (1.5, 4)
DISPATCH_WORKING = (2, 3)


def dispatch_bytes(cfg: ModelConfig, tokens: float, itemsize: int, mesh,
                   capacity_factor: float | None) -> tuple[float, float]:
    """(saved, working) bytes of one MoE layer's all-to-all dispatch for one pass over `tokens`
    tokens per device, by its buffer rows: with a capacity factor E x C, C = `capacity(tokens, k,
    E, capacity_factor)` slots per expert; dropless n x T x min(k, E / n) (each of the n source
    devices' worst case, `expert_parallel._dropless`)."""
    e, d, f, k = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts_per_tok
    if capacity_factor is None:
        rows = dropless_rows(int(tokens), k, e, mesh.shape["expert"])
    else:
        rows = e * capacity(int(tokens), k, e, capacity_factor)
    x, y = rows * d * itemsize, rows * f * itemsize / _tensor_shards(mesh, f)
    return (DISPATCH_SAVED[0] * x + DISPATCH_SAVED[1] * y, DISPATCH_WORKING[0] * x + DISPATCH_WORKING[1] * y)


# The vocab-chunk scan (`losses.token_stats_chunked`). A head without adapter that is not trained
# (every LoRA run that leaves lm_head alone) takes the one-pass gradient: the forward scan keeps the
# log-sum-exp's gradient G [tokens, D] (hidden dtype) for the backward and works on two
# [tokens, chunk] float32 buffers (logits, exp; 2.0 measured by XLA on CPU). Otherwise the scan is
# rematerialised: four [tokens] float32 carries saved per chunk and the hidden rows in
# loss-rows-first order, and in the backward about five [tokens, chunk] float32 buffers of one chunk
# (logits, exp, cotangents; 5.2 measured, independent of V).
VOCAB_CARRIES, VOCAB_CHUNK_BUFFERS, VOCAB_ONE_PASS_BUFFERS = 4, 5, 2


def vocab_loss_bytes(cfg: ModelConfig, tokens: float, n_loss: int, vocab_chunk: int, itemsize: int = 4,
                     mesh=None, lora_rank: int = 0, one_pass: bool = False) -> tuple[float, float]:
    """(saved for the backward, working set of one chunk) bytes of `n_loss` vocab-chunked token
    losses over `tokens` tokens per device; one_pass: a frozen head without adapter (see above). A
    vocabulary that is not whole chunks pads the head weight [V', D] (D over fsdp) and its
    adapter's B [V', r] (float32): copies the scan keeps."""
    n_chunks, vocab_chunk = vocab_chunking(cfg.vocab_size, vocab_chunk)
    if one_pass:
        return n_loss * tokens * cfg.hidden_size * itemsize, (n_loss > 0) * tokens * VOCAB_ONE_PASS_BUFFERS * vocab_chunk * 4
    # the carries, and the loss's hidden rows gathered into loss-rows-first order (`rows=`)
    saved = n_loss * tokens * (n_chunks * VOCAB_CARRIES * 4 + cfg.hidden_size * itemsize)
    if n_loss and n_chunks * vocab_chunk != cfg.vocab_size:
        d, fsdp = cfg.hidden_size, 1 if mesh is None else mesh.shape["fsdp"]
        saved += n_chunks * vocab_chunk * (d * itemsize / (fsdp if d % fsdp == 0 else 1) + n_loss * lora_rank * 4)
    return saved, (n_loss > 0) * tokens * VOCAB_CHUNK_BUFFERS * vocab_chunk * 4


def vocab_one_pass(c) -> bool:
    """Whether config c's loss heads take the vocabulary's one-pass gradient: the output head is
    frozen (not full training) and no loss head's LoRA targets match lm_head."""
    return not c.lora.full_training and not any(re.search(t, "lm_head") for h in ("diffusion", "ar")
                                                for t in builder.lora_spec(c, h).targets)


def activation_estimate(cfg: ModelConfig, dtype, *, batch: int, seq: int, remat: str, heads: Mapping[str, bool],
                        mesh, fp8_device_bytes: int = 0, vocab_chunk: int = 8192,
                        block_diffusion: bool = False, moe_all_to_all: bool = False,
                        capacity_factor: float | None = None, head_rank: int = 0,
                        vocab_one_pass: bool = False) -> dict[str, int]:
    """Estimated per-device bytes live at the peak of one train step, by term:

      saved residuals   what the forward passes keep for the backward. Every active head is one
                        forward pass over [batch, seq] (block diffusion's diffusion pass: x0 ⊕ xt,
                        [batch, 2 seq] over 2 seq keys), and the loss sums the heads before one
                        backward, so all passes' residuals are alive together. Per layer, remat
                        "none" keeps every intermediate, "full" the layer input [B, L, D], "dots"
                        the input and the matmul outputs.
      backward working  one layer's cotangents, plus (with remat) its recomputed intermediates.
      MoE dispatch      with the all-to-all dispatch (`moe_all_to_all`): per MoE layer and pass,
                        `dispatch_bytes` (E x C x D buffers, E x C x F intermediates); saved by
                        every layer without remat, one layer's (recomputed) with it, plus one
                        layer's cotangents.
      gathered experts  the dispatch takes each device's experts whole: with fsdp or data > 1 a
                        copy of a layer's local experts, all-gathered, in the compute dtype; every
                        layer's without remat, one layer's with it.
      vocab loss        the loss scans the head weight in vocab chunks (`vocab_loss_bytes`): a frozen
                        head without adapter keeps the log-sum-exp's gradient [tokens, D] per head
                        with a token loss (diffusion, ar) and works on two [tokens, chunk] float32
                        buffers; otherwise each chunk is rematerialised in the backward: four
                        [tokens] float32 carries per chunk, and about five [tokens, chunk] buffers.
                        The chunk working set counts only beyond the layers' backward working set,
                        which is never live at the same time.
      dequantized FP8   an FP8 base is dequantized to the compute dtype inside each matmul; the
                        matmul's backward needs that copy: every layer's without remat, one
                        layer's with it.
    Tokens are divided by the mesh axes that shard the batch; head- and FFN-wide terms by
    `tensor` where it divides them. XLA may fuse away or add copies: tests hold the saved
    residuals against `jax`'s own list and the no-remat total against XLA's buffer assignment."""
    if remat not in REMAT:
        raise PlanError(f"--remat={remat!r}: choose from {', '.join(REMAT)}")
    b = jnp.dtype(dtype).itemsize
    tokens = batch * seq / _batch_shards(mesh, batch)

    def per_token(keys: int) -> tuple[float, float]:
        """(saved, backward working) bytes per token of a pass whose queries see `keys` keys."""
        per_layer = [layer_bytes_per_token(cfg, i, keys, b, mesh, moe_all_to_all)
                     for i in range(cfg.num_hidden_layers)]
        one_layer = max(sum(t.values()) for t in per_layer)
        if remat == "none":
            return sum(sum(t.values()) for t in per_layer), one_layer
        if remat == "full":
            return sum(t["input"] for t in per_layer), 2 * one_layer
        return (sum(t["input"] + t["dots"] for t in per_layer),
                one_layer + max(t["other"] for t in per_layer))

    ends = 2 * cfg.hidden_size * b + cfg.hidden_size * 4   # embedding output, final norm (float32 copy + output)
    widths = [2 if h == "diffusion" and block_diffusion else 1 for h, on in heads.items() if on]  # x seq
    saved = sum(w * tokens * (per_token(w * seq)[0] + ends) for w in widths)
    working = max(w * tokens * per_token(w * seq)[1] for w in widths or [1])
    n_moe = sum(cfg.layer_is_moe(i) for i in range(cfg.num_hidden_layers)) if moe_all_to_all else 0
    d_saved = d_working = 0.0
    for w in widths if n_moe else ():
        keep, cot = dispatch_bytes(cfg, w * tokens, b, mesh, capacity_factor)
        d_saved += n_moe * keep if remat == "none" else 0.0
        d_working = max(d_working, cot + (keep if remat != "none" else 0.0))
    # The dispatch's shard_map takes a device's experts whole (sharded on E only): weights sharded
    # over fsdp / data too are all-gathered, in the compute dtype, and the backward keeps the copy
    # (one per layer, shared by the passes: XLA merges the identical gathers).
    gathered = 0.0
    if n_moe and mesh.shape["data"] * mesh.shape["fsdp"] > 1:
        gathered = (cfg.num_experts // mesh.shape["expert"]) * 3 * cfg.moe_intermediate_size * cfg.hidden_size * b
        gathered *= n_moe if remat == "none" else 1
    n_loss = sum(bool(heads.get(h)) for h in ("diffusion", "ar"))
    v_saved, v_working = vocab_loss_bytes(cfg, tokens, n_loss, vocab_chunk, b, mesh, head_rank, vocab_one_pass)
    # the loss runs between the last layer's forward and the first layer's backward: its chunk
    # working set and a layer's backward working set are never live together
    vocab = v_saved + max(0.0, v_working - working)
    dequant = fp8_device_bytes * b / (1 if remat == "none" else cfg.num_hidden_layers)
    return {"activations: saved residuals": int(saved),
            "activations: backward working set": int(working),
            "activations: MoE dispatch buffers": int(d_saved + d_working),
            "activations: gathered expert weights": int(gathered),
            "activations: vocab loss": int(vocab),
            "activations: dequantized FP8": int(dequant)}


def sample_working_set(cfg: ModelConfig, dtype, *, batch: int, length: int, block: int, mesh,
                       fp8_device_bytes: int = 0, attention_chunk: int = ModelOptions.attention_chunk,
                       attention_key_chunk: int = ModelOptions.attention_key_chunk) -> int:
    """Estimated per-device bytes of one sampler forward pass over [batch, length] (the prefix /
    dual caches run the whole sequence once per block): one layer's intermediates, with attention
    scores for one query chunk at a time (nothing is kept for a backward), the hidden states,
    float32 logits of one block, and one layer's dequantized FP8 weights."""
    b = jnp.dtype(dtype).itemsize
    rows = batch / _batch_shards(mesh, batch)
    # one attention tile: scores, exp (float32), probabilities and mask per head and key
    n, th = cfg.num_attention_heads, _tensor_shards(mesh, cfg.num_attention_heads * cfg.head_dim)
    scores = n * min(attention_key_chunk, length) * (4 + 4 + b + 1) / th
    one_layer = max(sum(layer_bytes_per_token(cfg, i, length, b, mesh).values()) for i in range(cfg.num_hidden_layers))
    per_token = one_layer + 2 * cfg.hidden_size * b
    return int(rows * (length * per_token + min(attention_chunk, length) * scores + block * cfg.vocab_size * 4)
               + fp8_device_bytes * b / cfg.num_hidden_layers)


# ----------------------------------------------------------------------------- KV cache
def kv_cache_leaves(cfg: ModelConfig, batch: int, length: int, dtype, mesh) -> list[Leaf]:
    """The leaves of `KVCache.empty(cfg, batch, length, dtype)`: k and v [layers, B, S, K, H] in the
    compute dtype, per-slot rank (int32) and validity (bool), per-row positions, one length;
    batch-sharded like every activation (kv heads over `tensor` where it divides them)."""
    kv_shape = (cfg.num_hidden_layers, batch, length, cfg.num_key_value_heads, cfg.head_dim)
    kv_axes = (None, ax.BATCH, ax.LENGTH, ax.ACT_KV_HEADS, None)
    parts = [("k", kv_shape, dtype, kv_axes), ("v", kv_shape, dtype, kv_axes),
             ("rank", (batch, length), jnp.int32, (ax.BATCH, ax.LENGTH)),
             ("valid", (batch, length), jnp.bool_, (ax.BATCH, ax.LENGTH)),
             ("length", (), jnp.int32, ()),
             ("next_pos", (batch,), jnp.int32, (ax.BATCH,)), ("next_rank", (batch,), jnp.int32, (ax.BATCH,))]
    return [leaf(name, shape, dt, NamedSharding(mesh, logical_to_spec(axes, shape, mesh)))
            for name, shape, dt, axes in parts]


# ----------------------------------------------------------------------------- the plan
@dataclasses.dataclass
class MemoryPlan:
    """Per-device bytes by row for training and for sampling, with the leaves behind the exact rows."""

    mesh: dict[str, int]
    model: ModelConfig
    dtype: jnp.dtype
    setting: dict[str, object]
    frozen: list[Leaf]
    trainable: list[Leaf]
    optimizer: list[Leaf]
    kv_cache: list[Leaf]
    activations: dict[str, int]
    sample_activations: int
    device_memory: int

    @property
    def devices(self) -> int:
        return math.prod(self.mesh.values())

    def train_rows(self) -> dict[str, int]:
        t = total(self.trainable)
        return {"base weights (frozen)": total(self.frozen), "trainable (LoRA, length head, mask row)": t,
                "gradients (trainable)": t, "optimizer state": total(self.optimizer), **self.activations}

    def sample_rows(self) -> dict[str, int]:
        return {"base weights (frozen)": total(self.frozen), "adapters (all heads)": total(self.trainable),
                "KV cache": total(self.kv_cache), "activations (one forward)": self.sample_activations}

    def train_total(self) -> int:
        return sum(self.train_rows().values())

    def sample_total(self) -> int:
        return sum(self.sample_rows().values())

    def fits(self, which: str) -> bool:
        return (self.train_total() if which == "train" else self.sample_total()) <= self.device_memory

    def format(self) -> str:
        m = self.model
        base = "block-FP8 e4m3 (128x128 blocks) + float32 scales" if m.fp8_block_size else np.dtype(self.dtype).name
        s = self.setting
        lines = [f"mesh {format_mesh(self.mesh)} = {self.devices} devices, {self.device_memory / GB:.1f} GB each",
                 f"model {m.architecture}: {m.num_hidden_layers} layers, D={m.hidden_size}, "
                 f"experts={m.num_experts}, vocab={m.vocab_size}; base {base}; compute {np.dtype(self.dtype).name}",
                 f"base parameters {sum(math.prod(x.shape) for x in self.frozen):,d}, "
                 f"trainable {sum(math.prod(x.shape) for x in self.trainable):,d}",
                 "", f"train step: batch {s['batch']} x seq {s['seq']}, remat {s['remat']}, "
                 f"heads {', '.join(h for h, on in s['heads'].items() if on)}"]
        lines += _table(self.train_rows(), self.train_total(), self.device_memory)
        lines += ["", f"sampling: batch {s['sample_batch']} x (prompt {s['prompt_length']} + gen {s['gen_length']})"]
        lines += _table(self.sample_rows(), self.sample_total(), self.device_memory)
        rep = replicated_leaves(self.frozen + self.trainable)
        lines += ["", "weights, adapters, optimizer state and KV cache: exact, from abstract shapes and "
                  "shardings; activations: an estimate (see jaxdiff/train/plan.py)."]
        if rep and self.devices > 1:
            lines.append(f"replicated leaves >= 1 MiB: {len(rep)}, {sum(x.device_bytes for x in rep) / GB:.2f} GB "
                         f"per device (largest: {rep[0].name} {rep[0].shape})")
        return "\n".join(lines)


def _table(rows: Mapping[str, int], total_bytes: int, memory: int) -> list[str]:
    width = max(len(k) for k in rows) + 2
    out = [f"  {k:{width}s}{v / GB:10.2f} GB" for k, v in rows.items()]
    verdict = "fits" if total_bytes <= memory else "does NOT fit"
    out.append(f"  {'total per device':{width}s}{total_bytes / GB:10.2f} GB  of {memory / GB:.1f} GB: {verdict}")
    return out


def replicated_leaves(leaves: Sequence[Leaf], min_bytes: int = 1 << 20) -> list[Leaf]:
    """Leaves of at least `min_bytes` held whole by every device, largest first (the abstract
    counterpart of `jaxdiff.parallel.replicated_report`)."""
    return sorted((x for x in leaves if x.replicated and x.global_bytes >= min_bytes),
                  key=lambda x: -x.global_bytes)


def plan_memory(c, *, mesh: Mapping[str, int], batch: int | None = None, seq: int | None = None,
                remat: str | None = None, sample_batch: int | None = None, prompt_length: int | None = None,
                gen_length: int | None = None, fp8: bool | None = None, hf_config: Mapping | None = None,
                device_memory_gb: float = 80.0) -> MemoryPlan:
    """The memory plan of training config `c` on a mesh of the given axis sizes. Unset settings
    come from the config: batch = data.batch_size, seq = data.seq_len, remat = model.remat
    ("full" or "none"), gen_length = sample.gen_length, sample_batch = batch, prompt_length =
    seq - gen_length (prompt + generation as long as a training sequence)."""
    batch = int(batch or c.data.batch_size)
    seq = int(seq or c.data.seq_len)
    remat = remat or ("full" if c.model.remat else "none")
    gen_length = int(gen_length or c.sample.gen_length)
    sample_batch = int(sample_batch or batch)
    if prompt_length is None:
        prompt_length = seq - gen_length
        if prompt_length < 0:
            raise PlanError(f"--gen_length={gen_length} is longer than --seq={seq}; give --prompt_length")
    for name, v in (("--batch", batch), ("--seq", seq), ("--gen_length", gen_length), ("--sample_batch", sample_batch)):
        if v <= 0:
            raise PlanError(f"{name}={v}: must be > 0")
    if remat not in REMAT:
        raise PlanError(f"--remat={remat!r}: choose from {', '.join(REMAT)}")
    sizes = resolve_mesh(mesh)
    amesh = abstract_mesh(sizes)
    ways = sizes["data"] * sizes["fsdp"] * sizes["expert"]
    if batch % ways:
        raise PlanError(f"--batch={batch} is not divisible by the batch-sharded mesh axes data x fsdp x expert = "
                        f"{ways} (--mesh {format_mesh(sizes)}); the trainer refuses such a batch")
    mcfg, dtype = model_config(c, hf_config, fp8)
    _, frozen, trainable = abstract_train_state(c, mcfg, dtype)
    optimizer = build_optimizer(cfg_lib.optimizer(c), trainable)
    _, _, o_sh, _ = step_shardings(amesh, frozen, trainable, optimizer)
    opt_state = jax.eval_shape(optimizer.init, trainable)
    frozen_l, trainable_l = state_leaves(frozen, amesh), state_leaves(trainable, amesh)
    fp8_bytes = total([x for x in frozen_l if x.dtype == np.dtype(jnp.float8_e4m3fn)])
    heads = active_heads(c)
    all_to_all = mcfg.num_experts > 0 and sizes["expert"] > 1 and c.model.moe_dispatch != "gspmd"
    acts = activation_estimate(mcfg, dtype, batch=batch, seq=seq, remat=remat, heads=heads, mesh=amesh,
                               fp8_device_bytes=fp8_bytes, vocab_chunk=int(c.objective.vocab_chunk),
                               block_diffusion=c.objective.kind == "block_diffusion", moe_all_to_all=all_to_all,
                               capacity_factor=float(c.model.moe_capacity_factor) or None,
                               head_rank=max(int(c.lora[h].rank) for h in ("diffusion", "ar")),
                               vocab_one_pass=vocab_one_pass(c))
    length = prompt_length + gen_length
    sample_acts = sample_working_set(mcfg, dtype, batch=sample_batch, length=length,
                                     block=min(int(c.sample.block_length), gen_length), mesh=amesh,
                                     fp8_device_bytes=fp8_bytes)
    return MemoryPlan(
        mesh=sizes, model=mcfg, dtype=jnp.dtype(dtype),
        setting=dict(batch=batch, seq=seq, remat=remat, heads=heads, sample_batch=sample_batch,
                     prompt_length=prompt_length, gen_length=gen_length),
        frozen=frozen_l, trainable=trainable_l, optimizer=tree_leaves(opt_state, o_sh),
        kv_cache=kv_cache_leaves(mcfg, sample_batch, length, dtype, amesh), activations=acts,
        sample_activations=sample_acts, device_memory=int(device_memory_gb * 1e9))


# ----------------------------------------------------------------------------- XLA's own number
def compiled_step_bytes(c, mcfg: ModelConfig, dtype, *, batch: int, seq: int, devices=None) -> dict[str, int]:
    """XLA's buffer assignment of the real train step of config `c` on model `mcfg`, compiled (not
    run: abstract arguments, no weights) for the mesh `c.mesh` over real devices (`devices`, None:
    all): per-device argument / output / alias / temp bytes and their "total" (arguments + outputs
    + temps - aliased, the donated trainable and optimizer state counted once). The yardstick the
    planner's tests hold `plan_memory` to."""
    from jaxdiff.parallel import make_mesh
    from jaxdiff.parallel.mesh import use_mesh
    from jaxdiff.train.step import jit_train_step, make_train_step

    mesh = make_mesh(dict(c.mesh), devices)
    abstract = builder.abstract_model_from_config(c, mcfg, dtype, options=builder.model_options(c, mesh))
    with use_mesh(mesh):
        graphdef, frozen, trainable = st.split(abstract, full_training=c.lora.full_training)
        optimizer = build_optimizer(cfg_lib.optimizer(c), trainable)
        shardings = step_shardings(mesh, frozen, trainable, optimizer)
        step = jit_train_step(make_train_step(graphdef, optimizer, cfg_lib.objective(c),
                                              full_training=c.lora.full_training), shardings=shardings)
        spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)
        batch_args = {"tokens": spec((batch, seq), jnp.int32), "valid": spec((batch, seq), jnp.bool_),
                      "prompt_lengths": spec((batch,), jnp.int32)}
        m = step.lower(frozen, trainable, jax.eval_shape(optimizer.init, trainable), batch_args,
                       spec((2,), jnp.uint32), spec((), jnp.int32)).compile().memory_analysis()
    out = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
           "alias": m.alias_size_in_bytes, "temp": m.temp_size_in_bytes}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out
