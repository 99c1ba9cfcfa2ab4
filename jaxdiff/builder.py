"""The one place that turns a config, a checkpoint folder or a training workdir into a model with its
heads and tokenizer. The trainer, the sampler's loader, the memory planner and `jaxdiff.load_model`
all build through here, so they cannot drift apart.

    build_model_from_config(c, tokenizer)   the model a run of config `c` trains: base (from
                                            model.checkpoint: a checkpoint folder or the trained
                                            model of a full-training workdir; or a from-scratch
                                            shape), mask token, the LoRA heads its objective uses,
                                            the length head
    load_base(path, ...)                    an HF folder or converted checkpoint, as stored
    load_workdir(workdir, step)             (model, tokenizer, config) of a training run
"""
from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiff import model as model_lib
from jaxdiff.config import schema
from jaxdiff.config.files import with_defaults
from jaxdiff.model.config import ModelConfig, RopeConfig
from jaxdiff.model.lora import FROZEN, TRAINABLE, LoRASpec, add_length_head, add_lora
from jaxdiff.model.mask_token import add_mask_token
from jaxdiff.model.options import ModelOptions

log = logging.getLogger("jaxdiff.builder")


# ----------------------------------------------------------------------------- config -> pieces
def model_options(c, mesh=None) -> ModelOptions:
    """How the model of config `c` computes on `mesh` (None: one device)."""
    m = c.model
    return ModelOptions(attention_impl=m.attention_impl, remat=bool(m.remat), remat_policy=m.remat_policy,
                        moe_dispatch=m.moe_dispatch if mesh is not None or m.moe_dispatch != "all_to_all" else "auto",
                        moe_capacity_factor=m.moe_capacity_factor or None, mesh=mesh)


def lora_spec(c, head: str) -> LoRASpec:
    h = c.lora[head]
    return LoRASpec(rank=h.rank, alpha=h.alpha, dropout=h.dropout,
                    targets=tuple(t.strip() for t in h.targets.split(",") if t.strip()))


def model_config_from_init(init, vocab_size: int, eos: int | None, pad: int | None) -> ModelConfig:
    """The ModelConfig of a from-scratch model: `config.model.init` and the tokenizer's ids."""
    d = dict(init)
    theta = d.pop("rope_theta")
    return ModelConfig(vocab_size=vocab_size, rope=RopeConfig(theta=theta), eos_token_id=eos, pad_token_id=pad, **d)


def scratch_vocab(n_tokens: int) -> int:
    return -(-n_tokens // 64) * 64   # spare rows, as Qwen3's embedding has


def tokenizer_for(c, workdir: str | None):
    """config.tokenizer.path, else the checkpoint's tokenizer, else the workdir's trained BPE, else
    (code data, from scratch) a BPE trained now on the corpus and saved in the workdir. With
    several processes, process 0 trains it and the others load it after a barrier."""
    from jaxdiff.data import sources
    from jaxdiff.data import tokenizer as tok_lib

    if c.tokenizer.path:
        return tok_lib.load_tokenizer(c.tokenizer.path)
    if c.model.checkpoint and _is_workdir(c.model.checkpoint):   # the tokenizer that run trained with
        return tokenizer_for(saved_run_config(c.model.checkpoint), os.path.abspath(c.model.checkpoint))
    if c.model.checkpoint:
        return tok_lib.load_tokenizer(c.model.checkpoint)
    if workdir is None:
        raise schema.ConfigValueError("config.tokenizer.path is empty and there is no workdir holding a tokenizer")
    path = os.path.join(workdir, "tokenizer")
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return tok_lib.load_tokenizer(path)
    if c.data.kind != "code":
        raise schema.ConfigValueError("config.tokenizer.path is required unless data.kind == 'code' "
                                      "(a BPE is trained on the code corpus)")
    if jax.process_index() == 0:
        files = sources.code_files(c.data.path or None)
        step = max(len(files) // c.tokenizer.train_files, 1)
        tok = tok_lib.train_bpe((sources.read_file(p) for p in files[::step]), c.tokenizer.vocab_size, path)
    if jax.process_count() > 1:   # the others load what process 0 wrote, once it is complete
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxdiff: tokenizer trained")
        if jax.process_index() != 0:
            tok = tok_lib.load_tokenizer(path)
    return tok


# ----------------------------------------------------------------------------- bases
def _stored_dtype(params) -> jnp.dtype:
    """Activation dtype: the dtype of the stored floating weights (bf16 for an FP8 base)."""
    dt = np.dtype(params["model.embed_tokens.weight"].dtype)
    return jnp.bfloat16 if dt.itemsize == 1 else jnp.dtype(dt)


def load_base(path: str | os.PathLike, *, dtype=None, mesh=None, rules=None,
              options: ModelOptions | None = None, eos_token_id: int | None = None) -> model_lib.Qwen3:
    """An HF checkpoint folder or a `tools/convert_hf.py` output as a model (no adapters).

    dtype: None keeps the stored dtypes (an FP8 base stays FP8 + block scales, computed in bf16);
           "float32" / "bfloat16" casts floating weights and dequantizes FP8.
    mesh:  parameters are restored directly sharded by their logical axes and `rules`.
    options: how the model computes (default ModelOptions(mesh=mesh)).
    eos_token_id: used when the checkpoint's config.json names none (e.g. the tokenizer's EOS)."""
    from jaxdiff.checkpoint import CheckpointError, load_params
    from jaxdiff.parallel import use_mesh

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint folder")
    cfg = ModelConfig.from_hf(path)
    if dtype is not None:
        dtype = jnp.dtype(dtype)
        if dtype not in (jnp.float32, jnp.bfloat16):
            raise ValueError(f"load_model: dtype must be None, float32 or bfloat16, got {dtype}")
        cfg = cfg.replace(fp8_block_size=None)
    options = ModelOptions(mesh=mesh) if options is None else options
    shardings = None if mesh is None else model_lib.param_shardings(cfg, mesh, rules)
    cfg, params = load_params(path, dtype=dtype, shardings=shardings)
    if cfg.eos_token_id is None and eos_token_id is not None:
        cfg = cfg.replace(eos_token_id=int(eos_token_id))
    compute = dtype if dtype is not None else _stored_dtype(params)
    with use_mesh(mesh, rules):
        m = model_lib.abstract_model(cfg, dtype=compute, options=options)
        model_lib.set_params(m, params, source=path)
    return m


# ----------------------------------------------------------------------------- a run's model
def attach_heads(model, c, tokenizer=None, *, mask_token_id: int | None = None, seed: int | None = None) -> None:
    """The parts a run adds to its base: the mask token (at the tokenizer's `<|mask|>`, or
    `mask_token_id`; a base that already has a trained one, i.e. a workdir's model, keeps it), the
    LoRA heads its objective trains (none in full training), the length head, and two static
    attributes the sampler reads: `objective_kind` (masked | block_diffusion) and
    `objective_block_size`. Structural, done once before the model is used."""
    seed = c.seed if seed is None else seed
    if model.config.mask_token_id is None:
        add_mask_token(model, tokenizer=tokenizer, mask_token_id=mask_token_id, trainable=c.mask_token.trainable)
    elif tokenizer is not None:
        _check_mask_token(model, tokenizer)
    if not c.lora.full_training:
        for h, on in schema.active_heads(c).items():
            if on:
                add_lora(model, h, lora_spec(c, h), seed=seed)
    if c.objective.length_weight:
        add_length_head(model, schema.length_edges(c), hidden=c.length_head.hidden, seed=seed)
    # what the diffusion head is trained for, so the sampler can match it (static, not a weight)
    model.objective_kind, model.objective_block_size = c.objective.kind, int(c.objective.block_size)


def build_model_from_config(c, tokenizer, *, mesh=None) -> model_lib.Qwen3:
    """The model a run of config `c` trains, initialised (base restored from model.checkpoint, or
    randomly for a from-scratch shape), its heads attached, placed on `mesh` (None: one device)."""
    from jaxdiff.parallel import use_mesh

    options = model_options(c, mesh)
    with use_mesh(mesh):
        if c.model.checkpoint and _is_workdir(c.model.checkpoint):
            model = _trained_model_of(c.model.checkpoint, c, mesh)
        elif c.model.checkpoint:
            model = load_base(c.model.checkpoint, dtype=c.model.dtype or None, mesh=mesh, options=options,
                              eos_token_id=tokenizer.eos_token_id)
        else:
            mcfg = model_config_from_init(c.model.init, scratch_vocab(len(tokenizer)), tokenizer.eos_token_id,
                                          tokenizer.pad_token_id)
            model = model_lib.build_model(mcfg, dtype=jnp.dtype(c.model.dtype or "float32"), seed=c.seed,
                                          options=options)
        attach_heads(model, c, tokenizer)
        if mesh is not None:
            model_lib.place(model, mesh)
    return model


def _is_workdir(path: str) -> bool:
    from jaxdiff.checkpoint.workdir import is_workdir
    return is_workdir(path)


def saved_run_config(workdir: str, step: int | None = None):
    """The run config saved with `workdir`'s checkpoint `step` (default: the newest)."""
    from jaxdiff.checkpoint import workdir as wd

    mgr = wd.manager(os.path.abspath(workdir), items=("meta",))
    try:
        return with_defaults(wd.saved_config(mgr, wd.pick_step(mgr, step)))
    finally:
        mgr.close()


def _check_mask_token(model, tokenizer) -> None:
    """A base with a trained mask token and a tokenizer: `<|mask|>` must name that row."""
    from jaxdiff.model.mask_token import MASK_TOKEN

    if MASK_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [MASK_TOKEN]})
    tid = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
    if tid != model.config.mask_token_id:
        raise ValueError(f"the tokenizer's {MASK_TOKEN} is id {tid} but the model's mask token is row "
                         f"{model.config.mask_token_id}")


def _trained_model_of(workdir: str, c, mesh):
    """config.model.checkpoint is a training workdir: the model its newest checkpoint holds. Only a
    full-training run qualifies (its checkpoint is every weight, mask row included); a LoRA run's
    adapters would need merging first. Computes with `c`'s model options (attention, remat, MoE)."""
    saved = saved_run_config(workdir)
    if not saved.lora.full_training:
        raise schema.ConfigValueError(
            f"config.model.checkpoint={workdir!r} is the workdir of an adapter (LoRA) run; starting from a "
            "workdir needs a full-training run (lora.full_training=True) -- export/convert a LoRA run first")
    for k in ("attention_impl", "remat", "remat_policy", "moe_dispatch", "moe_capacity_factor"):
        saved.model[k] = c.model[k]
    model, _, _ = load_workdir(workdir, mesh=mesh, config=saved)
    return model


def model_for_architecture(c, mcfg: ModelConfig, dtype, *, options: ModelOptions = ModelOptions()):
    """`build_model_from_config`'s model for a given architecture, randomly initialised, without
    reading a checkpoint or a tokenizer (the mask token takes the last embedding row): what the
    memory planner measures (abstractly, with `abstract_model_from_config`) and its tests build."""
    m = model_lib.Qwen3(mcfg, dtype=dtype, options=options, rngs=nnx.Rngs(params=0))
    attach_heads(m, c, mask_token_id=mcfg.vocab_size - 1, seed=0)
    return m


def abstract_model_from_config(c, mcfg: ModelConfig, dtype, *, options: ModelOptions = ModelOptions()):
    """`model_for_architecture` with ShapeDtypeStruct leaves: no memory, no compute."""
    return nnx.eval_shape(lambda: model_for_architecture(c, mcfg, dtype, options=options))


def split(model, *, full_training: bool = False):
    """-> (graphdef, frozen, trainable). LoRA training: the base (nnx.Param) is frozen and only
    adapters, the length head and a trained mask row are trainable. Full training: everything is
    trainable and `frozen` is empty."""
    if full_training:
        graphdef, trainable, frozen = nnx.split(model, nnx.Any(FROZEN, TRAINABLE), ...)
    else:
        graphdef, frozen, trainable, rest = nnx.split(model, FROZEN, TRAINABLE, ...)
        if jax.tree.leaves(rest):
            raise ValueError("model has state that is neither frozen base nor trainable: "
                             f"{list(nnx.to_flat_state(rest))[:5]}")
    return graphdef, frozen, trainable


def load_workdir(workdir: str, step: int | None = None, *, mesh=None, config=None):
    """(model, tokenizer, config) of a training run: the config saved with the checkpoint rebuilds
    the model (base from model.checkpoint, or the from-scratch shape) and the trained tree of
    `step` (default: the newest) is restored into it. One device unless `mesh` is given.
    `config`: the saved config, already read (and possibly with other model options)."""
    import orbax.checkpoint as ocp

    from jaxdiff.checkpoint import workdir as wd

    workdir = os.path.abspath(workdir)
    mgr = wd.manager(workdir, items=("trainable", "meta"))
    try:
        step = wd.pick_step(mgr, step)
        c = with_defaults(wd.saved_config(mgr, step)) if config is None else config
        tokenizer = tokenizer_for(c, workdir)
        model = build_model_from_config(c, tokenizer, mesh=mesh)
        _, _, trainable = split(model, full_training=c.lora.full_training)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                nnx.to_pure_dict(trainable))
        out = mgr.restore(step, args=ocp.args.Composite(trainable=ocp.args.StandardRestore(abstract)))
        nnx.replace_by_pure_dict(trainable, out["trainable"])
        nnx.update(model, trainable)
    finally:
        mgr.close()
    return model, tokenizer, c
