"""The named choices of every enumerated config field (the modules that implement them import these
tuples, so a name exists in exactly one place) and validation with the dotted key that holds a bad
value. No JAX here."""
from __future__ import annotations

ATTENTION_IMPLS = ("reference", "chunked", "fused")
REMAT_POLICIES = ("full", "dots")
MOE_DISPATCH = ("auto", "gspmd", "all_to_all")
SCHEDULES = ("linear", "cosine", "power", "sigmoid")
LOSSES = ("llada", "mdlm", "soft_ce")
OPTIMIZERS = ("adamw", "lion", "adafactor")
DECAYS = ("cosine", "linear", "constant")
DATA_KINDS = ("code", "text", "sft")
HEADS = ("ar", "diffusion", "length")
ESTIMATORS = ("trace_replay", "coupled", "mean_field")   # rl: per-token log-probabilities of a sample

CHOICES = {
    "model.attention_impl": ATTENTION_IMPLS, "model.dtype": ("", "float32", "bfloat16"),
    "model.remat_policy": REMAT_POLICIES, "model.moe_dispatch": MOE_DISPATCH,
    "objective.schedule": SCHEDULES, "objective.loss": LOSSES, "objective.attention": ("bidirectional", "block"),
    "optimizer.name": OPTIMIZERS, "optimizer.decay": DECAYS, "data.kind": DATA_KINDS,
}
POSITIVE = ("data.seq_len", "data.batch_size", "train.steps", "train.log_every", "train.eval_every",
            "train.eval_batches", "train.checkpoint_every", "train.keep", "optimizer.total_steps",
            "optimizer.grad_accum", "objective.block_size", "objective.vocab_chunk", "sample.gen_length",
            "sample.block_length", "sample.steps", "tokenizer.vocab_size")


class ConfigValueError(ValueError):
    """A bad config value; the message names its dotted key."""


def get(c, dotted: str):
    for part in dotted.split("."):
        c = c[part]
    return c


def validate(c) -> None:
    """Refuses every bad value by its dotted key (the sampler policy string is checked by the
    trainer, which knows the policies)."""
    for key, allowed in CHOICES.items():
        if get(c, key) not in allowed:
            raise ConfigValueError(f"config.{key}={get(c, key)!r}: choose from {', '.join(map(repr, allowed))}")
    for key in POSITIVE:
        if get(c, key) <= 0:
            raise ConfigValueError(f"config.{key}={get(c, key)!r}: must be > 0")
    if not 0 <= c.data.eval_permille < 1000:
        raise ConfigValueError(f"config.data.eval_permille={c.data.eval_permille}: must be in 0..999")
    if c.model.moe_capacity_factor < 0:
        raise ConfigValueError(f"config.model.moe_capacity_factor={c.model.moe_capacity_factor}: must be >= 0 (0 = dropless)")
    if c.optimizer.lr <= 0:
        raise ConfigValueError(f"config.optimizer.lr={c.optimizer.lr}: must be > 0")
    if c.sample.gen_length % c.sample.block_length:
        raise ConfigValueError("config.sample.gen_length must be a multiple of config.sample.block_length")
    if c.objective.sft != (c.data.kind == "sft"):
        raise ConfigValueError("config.objective.sft must be True exactly when config.data.kind == 'sft'")
    if not c.model.checkpoint and not c.lora.full_training:
        raise ConfigValueError("config.lora.full_training must be True when config.model.checkpoint is empty "
                               "(a from-scratch model has no pretrained base to freeze)")
    if c.objective.length_weight and not c.objective.sft:
        raise ConfigValueError("config.objective.length_weight needs SFT data (prompt/answer pairs)")
    for h in HEADS:
        if get(c, f"lora.{h}.rank") <= 0:
            raise ConfigValueError(f"config.lora.{h}.rank must be > 0")
    length_edges(c)


def length_edges(c) -> tuple[int, ...]:
    try:
        edges = tuple(int(x) for x in c.length_head.edges.split(","))
    except ValueError:
        raise ConfigValueError(f"config.length_head.edges={c.length_head.edges!r}: comma-separated integers") from None
    if list(edges) != sorted(set(edges)):
        raise ConfigValueError("config.length_head.edges must be strictly increasing")
    return edges


def active_heads(c) -> dict[str, bool]:
    """Which heads a run trains (a zero objective weight skips the head; the AR warm-up phase
    needs the ar head)."""
    o = c.objective
    return {"ar": bool(o.ar_weight or o.ar_only_steps), "diffusion": bool(o.diffusion_weight),
            "length": bool(o.length_weight)}
