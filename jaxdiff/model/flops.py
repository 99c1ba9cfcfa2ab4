"""Model FLOPs of a train step, per token, from the model's shape: what MFU is measured against
(the trainer's `mfu` scalar, tools/bench_train.py's TFLOP/s and MFU).

Counted: the matmuls over the active parameters N per token (attention projections; per layer the
dense MLP, or the router and the top-k experts' three projections; the LM head; embeddings are a
lookup, not a matmul): 2N forward, 2N for the input gradients backward, and with full training 2N
more for the weight gradients (4N for a frozen base with LoRA, whose own small matmuls are left
out, 6N for full training). Attention's scores and values: 4 x S x heads x head_dim per token and
layer forward (S keys, bidirectional), twice that backward. Not counted: recomputation
(rematerialised layers, the vocabulary loss's chunks), elementwise work, a block-diffusion
step's doubled sequence.
"""
from __future__ import annotations

from jaxdiff.model.config import ModelConfig


def active_matmul_params(cfg: ModelConfig) -> int:
    """Matmul parameters one token runs through (experts: the top-k of each MoE layer)."""
    d, hd = cfg.hidden_size, cfg.head_dim
    attn = d * cfg.num_attention_heads * hd * 2 + d * cfg.num_key_value_heads * hd * 2
    dense = 3 * d * cfg.intermediate_size
    moe = d * cfg.num_experts + cfg.num_experts_per_tok * 3 * d * cfg.moe_intermediate_size
    mlp = sum(moe if cfg.layer_is_moe(i) else dense for i in range(cfg.num_hidden_layers))
    return cfg.num_hidden_layers * attn + mlp + d * cfg.vocab_size


def train_flops_per_token(cfg: ModelConfig, seq: int, *, full_training: bool = False) -> float:
    """FLOPs of one train step per token at sequence length `seq` (the module docstring)."""
    n = active_matmul_params(cfg)
    attention = 12 * cfg.num_hidden_layers * seq * cfg.num_attention_heads * cfg.head_dim
    return (6.0 if full_training else 4.0) * n + attention
