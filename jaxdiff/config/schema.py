"""The named choices of every enumerated config field (the modules that implement them import these
tuples, so a name exists in exactly one place) and validation with the dotted key that holds a bad
value. No JAX here."""
from __future__ import annotations

ATTENTION_IMPLS = ("auto", "reference", "chunked", "fused", "cudnn", "splash")
REMAT_POLICIES = ("full", "dots")
MOE_DISPATCH = ("auto", "gspmd", "all_to_all")
SCHEDULES = ("linear", "cosine", "power", "sigmoid")
LOSSES = ("llada", "mdlm", "soft_ce")
OBJECTIVES = ("masked", "block_diffusion")   # objective.kind
OPTIMIZERS = ("adamw", "lion", "adafactor")
DECAYS = ("cosine", "linear", "constant")
DATA_KINDS = ("code", "text", "sft")
HEADS = ("ar", "diffusion", "length")
ESTIMATORS = ("trace_replay", "coupled", "mean_field")   # rl: per-token log-probabilities of a sample
BASELINES = ("mean", "leave_one_out")                     # rl: a group's baseline (rl/advantages.py)
SCALES = ("none", "std")                                  # rl: advantage scaling
NORMALIZATIONS = ("seq-mean-token-mean", "token-mean")    # rl: the policy loss's length normalisation
PROMPT_FORMATS = ("raw", "chat")                          # rl: the prompt as text | the chat template
RL_MODES = ("policy_gradient", "order_distill")           # rl: on-policy RL | constrained-order distillation

CHOICES = {
    "model.attention_impl": ATTENTION_IMPLS, "model.dtype": ("", "float32", "bfloat16"),
    "model.remat_policy": REMAT_POLICIES, "model.moe_dispatch": MOE_DISPATCH,
    "objective.kind": OBJECTIVES, "objective.schedule": SCHEDULES, "objective.loss": LOSSES,
    "objective.attention": ("bidirectional", "block"),
    "optimizer.name": OPTIMIZERS, "optimizer.decay": DECAYS, "data.kind": DATA_KINDS,
    "rl.estimator": ESTIMATORS, "rl.baseline": BASELINES, "rl.scale": SCALES, "rl.normalization": NORMALIZATIONS,
    "rl.attention": ("bidirectional", "block"), "rl.prompt_format": PROMPT_FORMATS, "rl.mode": RL_MODES,
}
POSITIVE = ("data.seq_len", "data.batch_size", "train.steps", "train.log_every", "train.eval_every",
            "train.eval_batches", "train.checkpoint_every", "train.keep", "optimizer.total_steps",
            "optimizer.grad_accum", "objective.block_size", "objective.vocab_chunk", "sample.gen_length",
            "sample.block_length", "sample.steps", "tokenizer.vocab_size",
            "rl.prompts_per_batch", "rl.batches", "rl.mu", "rl.gen_length", "rl.block_length", "rl.temperature",
            "rl.shrink", "rl.log_ratio_clamp", "rl.workers", "rl.timeout_s", "rl.memory_mb", "rl.log_every",
            "rl.checkpoint_every", "rl.keep", "rl.reward.itrs_scale", "rl.reward.cpu_ms_scale", "rl.n_orders",
            "rl.keep_orders")


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
    _validate_times(c.objective)
    if c.objective.kind == "block_diffusion":
        _validate_block_diffusion(c.objective)
    elif c.objective.block_size_schedule:
        raise ConfigValueError(f"config.objective.block_size_schedule={c.objective.block_size_schedule!r}: "
                               "growing blocks need config.objective.kind='block_diffusion'")
    if c.objective.length_weight and not c.objective.sft:
        raise ConfigValueError("config.objective.length_weight needs SFT data (prompt/answer pairs)")
    for h in HEADS:
        if get(c, f"lora.{h}.rank") <= 0:
            raise ConfigValueError(f"config.lora.{h}.rank must be > 0")
    length_edges(c)
    validate_rl(c.rl)


def validate_rl(r) -> None:
    """The values of config.rl that CHOICES and POSITIVE do not cover (the rollout policy and cache
    names are checked by jaxdiff.rl.config, which knows the sampler)."""
    def bad(key, why):
        raise ConfigValueError(f"config.rl.{key}={get(r, key)!r}: {why}")

    if r.group_size < 2:
        bad("group_size", "must be >= 2 (a group of one has no baseline)")
    if r.gen_length % r.block_length:
        bad("gen_length", f"must be a multiple of config.rl.block_length={r.block_length}")
    if r.steps != -1 and (r.steps <= 0 or r.steps % (r.gen_length // r.block_length)):
        bad("steps", f"-1 (one per answer token) or a positive multiple of the number of blocks "
                     f"({r.gen_length // r.block_length})")
    if not 0 < r.t_min <= r.t_max < 1:
        bad("t_min", f"needs 0 < t_min <= t_max < 1 (t_max={r.t_max})")
    if not 0 <= r.prompt_mask_prob < 1:
        bad("prompt_mask_prob", "must be in [0, 1)")
    if not 0 <= r.eps_low < 1:
        bad("eps_low", "must be in [0, 1)")
    if r.keep_orders > r.n_orders:
        bad("keep_orders", f"must be <= config.rl.n_orders={r.n_orders} (the orders kept of those sampled)")
    if r.minibatch_size and r.minibatch_size > r.prompts_per_batch * r.group_size:
        bad("minibatch_size", f"0 (one step over the whole batch) or at most the batch's "
                              f"prompts_per_batch x group_size = {r.prompts_per_batch * r.group_size} rows")
    for key in ("eps_high", "beta", "prompt_length", "log_samples", "minibatch_size", "reward.correctness", "reward.speed",
                "reward.efficiency", "order_temperature"):
        if get(r, key) < 0:
            bad(key, "must be >= 0")
    if r.resume_batch < -1:
        bad("resume_batch", "-1 (the newest readable checkpoint) or a batch count")
    if not [s for s in r.suites.split(",") if s.strip()]:
        bad("suites", "name at least one task suite (e.g. synthetic-train)")


def _validate_times(o) -> None:
    if not 0 < o.time_eps < o.time_max <= 1:
        raise ConfigValueError(f"config.objective.time_eps={o.time_eps!r}, config.objective.time_max={o.time_max!r}: "
                               "need 0 < time_eps < time_max <= 1")


def _validate_block_diffusion(o) -> None:
    """What the block-diffusion objective cannot combine with, by field."""
    if o.span_prob > 0:
        raise ConfigValueError(f"config.objective.span_prob={o.span_prob!r}: spans are per row; "
                               "objective.kind='block_diffusion' noises each block on its own (use 0)")
    if o.stage2_step >= 0:
        raise ConfigValueError(f"config.objective.stage2_step={o.stage2_step!r}: edit corruption is for "
                               "objective.kind='masked' (use -1 with block_diffusion)")
    block_size_schedule(o)


def block_size_schedule(o) -> tuple[tuple[int, int], ...]:
    """objective.block_size_schedule "SIZE@STEP,..." -> ((from_step, size), ...), sorted; () when
    empty (objective.block_size throughout). The first entry starts at step 0 and the last size is
    objective.block_size (what the model is sampled with)."""
    text = o.block_size_schedule.strip()
    if not text:
        return ()
    field = f"config.objective.block_size_schedule={o.block_size_schedule!r}"
    try:
        pairs = [tuple(int(x) for x in item.split("@")) for item in text.split(",")]
    except ValueError:
        raise ConfigValueError(f"{field}: comma-separated SIZE@STEP pairs, e.g. '4@0,8@200,16@400'") from None
    if any(len(p) != 2 for p in pairs):
        raise ConfigValueError(f"{field}: comma-separated SIZE@STEP pairs, e.g. '4@0,8@200,16@400'")
    steps = [step for _, step in pairs]
    if steps[0] != 0 or steps != sorted(set(steps)):
        raise ConfigValueError(f"{field}: steps must start at 0 and strictly increase")
    if any(size <= 0 for size, _ in pairs):
        raise ConfigValueError(f"{field}: block sizes must be > 0")
    if pairs[-1][0] != o.block_size:
        raise ConfigValueError(f"{field}: the last size must be config.objective.block_size={o.block_size} "
                               "(the block size the model is sampled with)")
    return tuple((step, size) for size, step in pairs)


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
