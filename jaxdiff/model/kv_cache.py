"""KV cache for block decoding: append a committed block, attend to cache + current block.

Shapes are static (one compile per cache size): k, v [layers, B, S, K, H]; per slot a visibility
rank and a validity bit (see attention.py); `length` slots are filled (the same for every row:
rows are left-padded, padding is simply an invalid slot). `next_pos` [B] is the position the next
token of each row gets; `next_rank` [B] the rank the next block gets in `block` mode.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from jaxdiff.model.config import ModelConfig


@struct.dataclass
class KVCache:
    k: jax.Array
    v: jax.Array
    rank: jax.Array       # [B, S] int32
    valid: jax.Array      # [B, S] bool
    length: jax.Array     # [] int32
    next_pos: jax.Array   # [B] int32
    next_rank: jax.Array  # [B] int32

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=jnp.float32) -> "KVCache":
        shape = (cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   rank=jnp.zeros((batch, max_len), jnp.int32), valid=jnp.zeros((batch, max_len), bool),
                   length=jnp.zeros((), jnp.int32), next_pos=jnp.zeros((batch,), jnp.int32),
                   next_rank=jnp.zeros((batch,), jnp.int32))

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def layer(self, i: int) -> tuple[jax.Array, jax.Array]:
        return self.k[i], self.v[i]

    def append(self, new_kv: list[tuple[jax.Array, jax.Array]], rank: jax.Array, valid: jax.Array,
               positions: jax.Array, block_mode: bool) -> "KVCache":
        """Writes this call's keys/values [B, Q, K, H] per layer at slot `length`."""
        k = jnp.stack([kv[0] for kv in new_kv]).astype(self.k.dtype)
        v = jnp.stack([kv[1] for kv in new_kv]).astype(self.v.dtype)
        at = self.length
        upd = lambda buf, x, axis: jax.lax.dynamic_update_slice_in_dim(buf, x, at, axis)
        last_pos = jnp.max(jnp.where(valid, positions, -1), axis=1)
        return self.replace(
            k=upd(self.k, k, 2), v=upd(self.v, v, 2), rank=upd(self.rank, rank, 1),
            valid=upd(self.valid, valid, 1), length=self.length + rank.shape[1],
            next_pos=jnp.maximum(self.next_pos, last_pos + 1),
            next_rank=self.next_rank + 1 if block_mode else jnp.max(jnp.where(valid, rank, -1), axis=1) + 1)
