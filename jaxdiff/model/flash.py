"""Chunked ("flash") attention with a custom VJP: the visibility rule of attention.py, computed one
(query chunk, key chunk) tile at a time, so no pass ever holds more than [B, N, Cq, Ck] scores.

Einsum letters as in attention.py: B batch, Q query rows (of a chunk), S keys (of a chunk), K kv
heads, G query heads per kv head, H head dim.

Forward: an online softmax over key chunks per query chunk (running max m and sum l; FlashAttention
2's recurrence). It keeps only q, k, v, the output and (m, l) per query row: O(L) residuals. Backward:
per query chunk and key chunk it recomputes the probabilities p = exp(s - m) / l from the saved
(m, l) and accumulates dq (per query chunk) and dk, dv (over all query chunks).

Masked scores are the finite float32 minimum, as in the reference path, so a query that sees no key
at all averages every real key uniformly exactly as the reference's softmax does; keys that exist only
as chunk padding score -inf and never count.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

NEG = float(jnp.finfo(jnp.float32).min)


def allowed_mask(q_rank, k_rank, k_valid, q_noisy=None, k_noisy=None) -> jax.Array:
    """The one visibility rule (attention.py's docstring) as a boolean [B, 1, Q, S], from per-token
    descriptors: ranks q_rank [B, Q] / k_rank [B, S], k_valid [B, S], noisy flags [B, Q] / [B, S]
    (None: every token clean). Built per tile by the chunked path."""
    qr, kr = q_rank[:, None, :, None], k_rank[:, None, None, :]
    valid = k_valid[:, None, None, :]
    if q_noisy is None and k_noisy is None:
        return valid & (kr <= qr)
    qn = (jnp.zeros_like(q_rank, bool) if q_noisy is None else q_noisy)[:, None, :, None]
    kn = (jnp.zeros_like(k_rank, bool) if k_noisy is None else k_noisy)[:, None, None, :]
    clean_key = kr + qn.astype(kr.dtype) <= qr
    noisy_key = qn & (kr == qr)
    return valid & jnp.where(kn, noisy_key, clean_key)


def _pad(x, axis, size, value=0):
    if x is None or x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


MAX_BATCH_GROUPS = 8          # a call runs its batch as up to this many independent groups ...
GROUP_TILE_ELEMENTS = 1 << 19  # ... the fewest that bring a group's score tile to <= 2 MiB of float32


def tile_size(length: int, chunk: int) -> int:
    """Rows per tile when `length` rows are cut into ceil(length / chunk) tiles of near-equal size:
    the rows pad by fewer than the number of tiles, never up to a whole `chunk` (528 keys at chunk 512
    are 2 tiles of 264, not 2 of 512: x0 ⊕ xt of a 264-token row spent half its attention on padding)."""
    n = -(-length // chunk)
    return -(-length // n)


def batch_groups(b: int, tile_per_row: int) -> int:
    """Groups a batch of b rows is split into: the fewest (a divisor of b, at most MAX_BATCH_GROUPS)
    whose score tile [b / groups, N, Cq, Ck] (tile_per_row = N * Cq * Ck elements per row) fits
    GROUP_TILE_ELEMENTS. A tile that stays in cache, and groups whose small ops XLA runs side by side:
    on the 2-core CPU one layer's attention fwd+bwd at batch 4 x 512 (8 heads, 128 x 512 tiles) takes
    ~125-165 ms as 4 groups against ~210 ms as one."""
    divisors = [g for g in range(1, min(b, MAX_BATCH_GROUPS) + 1) if b % g == 0]
    return next((g for g in divisors if b // g * tile_per_row <= GROUP_TILE_ELEMENTS), divisors[-1])


def flash_attention(q, k, v, q_rank, k_rank, k_valid, q_noisy=None, k_noisy=None, bias=None, *,
                    q_chunk: int, k_chunk: int) -> jax.Array:
    """q [B, Q, N, H] over k, v [B, S, K, H] under the visibility rule -> [B, Q, N, H].
    bias [B, 1, Q, S] or None (additive, differentiable). Chunks are balanced over the lengths
    (`tile_size`: at most q_chunk / k_chunk rows a tile).
    The batch runs as `batch_groups` independent groups (each its own tiles and custom VJP)."""
    b, nq, s_len = q.shape[0], q.shape[1], k.shape[1]
    q_chunk, k_chunk = tile_size(nq, q_chunk), tile_size(s_len, k_chunk)
    groups = batch_groups(b, q.shape[2] * q_chunk * k_chunk)
    if groups > 1:   # every per-row input at the full batch, so each group takes its own rows
        if bias is not None:
            bias = jnp.broadcast_to(bias, (b, 1, nq, s_len))
        q_rank, q_noisy = (None if x is None else jnp.broadcast_to(x, (b, nq)) for x in (q_rank, q_noisy))
        k_rank, k_valid, k_noisy = (None if x is None else jnp.broadcast_to(x, (b, s_len))
                                    for x in (k_rank, k_valid, k_noisy))
    if groups == 1:
        return _flash_attention(q, k, v, q_rank, k_rank, k_valid, q_noisy, k_noisy, bias,
                                q_chunk=q_chunk, k_chunk=k_chunk)
    size = b // groups
    part = lambda x, i: None if x is None else x[i * size:(i + 1) * size]
    return jnp.concatenate([
        _flash_attention(*(part(x, i) for x in (q, k, v, q_rank, k_rank, k_valid, q_noisy, k_noisy, bias)),
                         q_chunk=q_chunk, k_chunk=k_chunk) for i in range(groups)])


def _flash_attention(q, k, v, q_rank, k_rank, k_valid, q_noisy, k_noisy, bias, *, q_chunk: int, k_chunk: int):
    b, nq, n, h = q.shape
    s_len, kv = k.shape[1], k.shape[2]
    cq, ck = min(q_chunk, nq), min(k_chunk, s_len)
    qp_len, sp_len = -(-nq // cq) * cq, -(-s_len // ck) * ck
    # heads-major layouts once per call, so every tile's matmul is a plain batched GEMM over (B, K)
    qh = jnp.einsum("BQKGH->BKGQH", _pad(q.reshape(b, nq, kv, n // kv, h), 1, qp_len))
    kh, vh = (jnp.einsum("BSKH->BKSH", _pad(x, 1, sp_len)) for x in (k, v))
    fill = jnp.where(jnp.arange(sp_len) < s_len, NEG, -jnp.inf).astype(jnp.float32)   # [Sp]
    if bias is not None:
        bias = _pad(_pad(jnp.broadcast_to(bias, (b, 1, nq, s_len)), 2, qp_len), 3, sp_len)
    vis = (_pad(q_rank, 1, qp_len), _pad(q_noisy, 1, qp_len), _pad(k_rank, 1, sp_len),
           _pad(k_valid, 1, sp_len, False), _pad(k_noisy, 1, sp_len, False), fill)
    out = _flash(qh, kh, vh, bias, vis, h ** -0.5, cq, ck)            # [B, K, G, Qp, H]
    return jnp.einsum("BKGQH->BQKGH", out)[:, :nq].reshape(b, nq, n, h)


def _tile(q_c, k_c, bias_c, vis, i, j, scale, cq, ck):
    """Scores of query chunk i (q_c [B, K, G, Cq, H]) against key chunk j (k_c [B, K, Ck, H]) ->
    (s [B, K, G, Cq, Ck] float32 with masked entries filled, allowed [B, 1, 1, Cq, Ck])."""
    q_rank, q_noisy, k_rank, k_valid, k_noisy, fill = vis
    qs = lambda x: None if x is None else jax.lax.dynamic_slice_in_dim(x, i * cq, cq, 1)
    ks = lambda x: None if x is None else jax.lax.dynamic_slice_in_dim(x, j * ck, ck, x.ndim - 1)
    allowed = allowed_mask(qs(q_rank), ks(k_rank), ks(k_valid), qs(q_noisy), ks(k_noisy))[:, :, None]
    s = jnp.einsum("BKGQH,BKSH->BKGQS", q_c, k_c, preferred_element_type=jnp.float32) * scale
    if bias_c is not None:
        s = s + bias_c[:, :, None].astype(jnp.float32)
    return jnp.where(allowed, s, ks(fill)), allowed


def _chunks(x, size, axis):
    """[..., n * size, ...] -> [n, ..., size, ...]: the chunks of `axis` as a scan's xs."""
    if x is None:
        return None
    shape = x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _unchunk(x, axis):
    """The inverse of `_chunks`."""
    x = jnp.moveaxis(x, 0, axis)
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2:])


def _loop(body, carry, xs, n):
    """lax.scan over (range(n), xs) without a loop when n == 1 (the common short-sequence case)."""
    if n == 1:
        carry, y = body(carry, (jnp.int32(0), jax.tree.map(lambda a: a[0], xs)))
        return carry, jax.tree.map(lambda a: a[None], y)
    return jax.lax.scan(body, carry, (jnp.arange(n), xs))


def _forward(q, k, v, bias, vis, scale, cq, ck):
    """q [B, K, G, Qp, H], k / v [B, K, Sp, H] -> out [B, K, G, Qp, H] in q's dtype, m and l
    [B, K, G, Qp] float32."""
    b, kv, g, qp_len, h = q.shape
    nq, nk = qp_len // cq, k.shape[2] // ck
    k_chunks, v_chunks = _chunks(k, ck, 2), _chunks(v, ck, 2)

    def q_step(_, xs):
        i, (q_c, b_c) = xs

        def k_step(carry, xs):
            m, l, acc = carry
            j, (k_c, v_c, bj) = xs
            s, _ = _tile(q_c, k_c, bj, vis, i, j, scale, cq, ck)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.exp(s - m_new[..., None])
            a = jnp.exp(m - m_new)
            pv = jnp.einsum("BKGQS,BKSH->BKGQH", p.astype(v.dtype), v_c, preferred_element_type=jnp.float32)
            return (m_new, l * a + jnp.sum(p, axis=-1), acc * a[..., None] + pv), None

        init = (jnp.full((b, kv, g, cq), NEG, jnp.float32), jnp.zeros((b, kv, g, cq), jnp.float32),
                jnp.zeros((b, kv, g, cq, h), jnp.float32))
        (m, l, acc), _ = _loop(k_step, init, (k_chunks, v_chunks, _chunks(b_c, ck, 3)), nk)
        return None, ((acc / l[..., None]).astype(q.dtype), m, l)

    _, (out, m, l) = _loop(q_step, None, (_chunks(q, cq, 3), _chunks(bias, cq, 2)), nq)
    return _unchunk(out, 3), _unchunk(m, 3), _unchunk(l, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(q, k, v, bias, vis, scale, cq, ck):
    with jax.named_scope("flash_attention"):
        return _forward(q, k, v, bias, vis, scale, cq, ck)[0]


def _flash_fwd(q, k, v, bias, vis, scale, cq, ck):
    with jax.named_scope("flash_attention"):
        out, m, l = _forward(q, k, v, bias, vis, scale, cq, ck)
    return out, (q, k, v, bias, vis, out, m, l)


def _flash_bwd(scale, cq, ck, res, d_out):
    with jax.named_scope("flash_attention_bwd"):
        return _backward(scale, cq, ck, res, d_out)


def _backward(scale, cq, ck, res, d_out):
    q, k, v, bias, vis, out, m, l = res
    nq, nk = q.shape[3] // cq, k.shape[2] // ck
    delta = jnp.einsum("BKGQH,BKGQH->BKGQ", d_out.astype(jnp.float32), out.astype(jnp.float32))
    k_chunks, v_chunks = _chunks(k, ck, 2), _chunks(v, ck, 2)

    def q_step(carry, xs):
        dk, dv = carry                                       # [nk, B, K, H, Ck] float32 (transposed)
        i, (q_c, do_c, m_c, l_c, dl_c, b_c) = xs
        inv_l = 1.0 / l_c

        def k_step(dq, xs):
            j, (k_c, v_c, dk_c, dv_c, bj) = xs
            s, allowed = _tile(q_c, k_c, bj, vis, i, j, scale, cq, ck)
            p = jnp.exp(s - m_c[..., None]) * inv_l[..., None]                    # [B, K, G, Q, S]
            # dv and dk accumulate transposed ([H, Ck]): the small q / dO tiles are transposed for the
            # product, not the [G*Q, Ck] probability tiles (XLA:CPU copies a transposed operand)
            dv_c = dv_c + jnp.einsum("BKGQH,BKGQS->BKHS", do_c, p.astype(do_c.dtype),
                                     preferred_element_type=jnp.float32)
            dp = jnp.einsum("BKGQH,BKSH->BKGQS", do_c, v_c, preferred_element_type=jnp.float32)
            ds = jnp.where(allowed, p * (dp - dl_c[..., None]), 0.0)
            d_bias = None if bj is None else jnp.sum(ds, axis=(1, 2))[:, None].astype(bias.dtype)
            ds = (ds * scale).astype(q.dtype)
            dq = dq + jnp.einsum("BKGQS,BKSH->BKGQH", ds, k_c, preferred_element_type=jnp.float32)
            dk_c = dk_c + jnp.einsum("BKGQH,BKGQS->BKHS", q_c, ds, preferred_element_type=jnp.float32)
            return dq, (dk_c, dv_c, d_bias)

        xs = (k_chunks, v_chunks, dk, dv, _chunks(b_c, ck, 3))
        dq, (dk, dv, d_bias) = _loop(k_step, jnp.zeros(q_c.shape, jnp.float32), xs, nk)
        return (dk, dv), (dq.astype(q.dtype), None if d_bias is None else _unchunk(d_bias, 3))

    zeros = jnp.zeros(jnp.swapaxes(k_chunks, -1, -2).shape, jnp.float32)
    xs = (_chunks(q, cq, 3), _chunks(d_out, cq, 3), _chunks(m, cq, 3), _chunks(l, cq, 3), _chunks(delta, cq, 3),
          _chunks(bias, cq, 2))
    (dk, dv), (dq, d_bias) = _loop(q_step, (zeros, zeros), xs, nq)
    d_bias = None if d_bias is None else _unchunk(d_bias, 2)
    dk, dv = (jnp.swapaxes(x, -1, -2) for x in (dk, dv))
    return (_unchunk(dq, 3), _unchunk(dk, 2).astype(k.dtype), _unchunk(dv, 2).astype(v.dtype), d_bias, None)


_flash.defvjp(_flash_fwd, _flash_bwd)
