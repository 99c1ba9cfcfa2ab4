"""Tiny model configs used across model tests (no HF files needed), and a jitted model call."""
from flax import nnx

from jaxdiff.model import ModelConfig

_STATIC = ("attention", "block_size", "commit", "logits", "lora")


def dense(**kw) -> ModelConfig:
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
    return ModelConfig(**{**base, **kw})


def moe(**kw) -> ModelConfig:
    base = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=8, num_key_value_heads=4, head_dim=16, num_experts=8,
                num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)
    return ModelConfig(**{**base, **kw})


def jitted(model):
    """`model(tokens, **kw)` as one jitted program per shape and mode (string, int and bool keywords
    static; arrays, the cache included, traced). On CPU, eager calls of a MoE model compile each op
    for each new shape, several times slower than compiling the whole forward once."""
    import jax

    graphdef, state = nnx.split(model)
    call = jax.jit(lambda state, tokens, **kw: nnx.merge(graphdef, state)(tokens, **kw), static_argnames=_STATIC)
    return lambda tokens, **kw: call(state, tokens, **kw)
