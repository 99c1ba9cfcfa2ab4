"""Logical axis names and the default rules that map them to mesh axes.

Parameters and activations carry logical names only; which mesh axis (if any) a logical axis lands
on is decided here, in one table, and can be overridden from config.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel + parameter sharding),
`expert` (MoE experts; data parallel outside the experts), `tensor` (heads / MLP columns).
"""
MESH_AXES = ("data", "fsdp", "expert", "tensor")

# Parameter axes.
VOCAB = "vocab"            # embedding / lm_head rows
EMBED = "embed"            # model width D
Q_HEADS = "q_heads"        # N * H (query heads x head dim), out dim of q_proj
KV_HEADS = "kv_heads"      # K * H, out dim of k_proj / v_proj
HEAD_DIM = "head_dim"      # per-head norm weights
MLP = "mlp"                # dense FFN width F
EXPERTS = "experts"        # E
EXPERT_MLP = "expert_mlp"  # per-expert FFN width
ROUTER = "router"          # E on the router's weight (small, replicated)
NORM = "norm"              # RMSNorm weights
LORA_RANK = "lora_rank"    # LoRA rank r
SCALE_BLOCKS = "scale_blocks"  # FP8 block-scale grid (small, replicated)

# Activation axes.
BATCH = "batch"
LENGTH = "length"
ACT_EMBED = "act_embed"
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_VOCAB = "act_vocab"
ACT_MLP = "act_mlp"

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (VOCAB, "tensor"),
    (EMBED, "fsdp"),
    (Q_HEADS, "tensor"),
    (KV_HEADS, "tensor"),
    (HEAD_DIM, None),
    (MLP, "tensor"),
    (EXPERTS, "expert"),
    (EXPERT_MLP, "tensor"),
    (ROUTER, None),
    (NORM, None),
    (LORA_RANK, None),
    (SCALE_BLOCKS, None),
    (BATCH, ("data", "fsdp", "expert")),
    (LENGTH, None),
    (ACT_EMBED, None),
    (ACT_HEADS, "tensor"),
    (ACT_KV_HEADS, "tensor"),
    (ACT_VOCAB, "tensor"),
    (ACT_MLP, "tensor"),
)
