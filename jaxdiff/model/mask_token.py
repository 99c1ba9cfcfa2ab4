"""The `<|mask|>` token. Qwen3 has none: jaxdiff puts it at an unused embedding row (Qwen3's
embedding has spare rows past the tokenizer's 151,669 entries), initialised to the mean embedding
of the tokenizer's real tokens, and records its id in the model config."""
from __future__ import annotations

import jax.numpy as jnp

from jaxdiff.model.lora import MaskEmbedding

MASK_TOKEN = "<|mask|>"


def add_mask_token(model, *, tokenizer=None, mask_token_id: int | None = None, trainable: bool = False) -> int:
    """Assigns the mask token and initialises its row; returns its id.

    tokenizer: an HF tokenizer; `<|mask|>` is added to it as a special token (if absent) and takes
      the next free id, which must be a spare embedding row.
    mask_token_id: an explicit row (models without a tokenizer).
    trainable: keep the row as its own `MaskEmbedding` variable, trained with the adapters.
    """
    cfg = model.config
    if tokenizer is not None:
        if MASK_TOKEN not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [MASK_TOKEN]})
        tid = tokenizer.convert_tokens_to_ids(MASK_TOKEN)
        if mask_token_id is not None and mask_token_id != tid:
            raise ValueError(f"mask_token_id={mask_token_id} but the tokenizer gives {MASK_TOKEN} id {tid}")
        mask_token_id, n_real = tid, min(tid, len(tokenizer) - 1)
    elif mask_token_id is None:
        raise ValueError("add_mask_token needs a tokenizer or an explicit mask_token_id")
    else:
        n_real = mask_token_id
    if not 0 <= mask_token_id < cfg.vocab_size:
        raise ValueError(f"mask token id {mask_token_id} is outside the embedding's {cfg.vocab_size} rows")
    emb = model.model.embed_tokens
    table = emb.weight[...]
    mean = jnp.mean(table[:max(n_real, 1)].astype(jnp.float32), axis=0)
    if trainable:
        emb.mask_vector = MaskEmbedding(mean, axes=(None,))
    else:
        emb.weight.set_value(table.at[mask_token_id].set(mean.astype(table.dtype)))
    model.config = cfg.replace(mask_token_id=int(mask_token_id))
    return int(mask_token_id)
