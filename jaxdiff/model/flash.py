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


def flash_attention(q, k, v, q_rank, k_rank, k_valid, q_noisy=None, k_noisy=None, bias=None, *,
                    q_chunk: int, k_chunk: int) -> jax.Array:
    """q [B, Q, N, H] over k, v [B, S, K, H] under the visibility rule -> [B, Q, N, H].
    bias [B, 1, Q, S] or None (additive, differentiable). Chunks are clipped to the lengths."""
    b, nq, n, h = q.shape
    s_len, kv = k.shape[1], k.shape[2]
    cq, ck = min(q_chunk, nq), min(k_chunk, s_len)
    qp_len, sp_len = -(-nq // cq) * cq, -(-s_len // ck) * ck
    qg = _pad(q.reshape(b, nq, kv, n // kv, h), 1, qp_len)
    fill = jnp.where(jnp.arange(sp_len) < s_len, NEG, -jnp.inf).astype(jnp.float32)   # [Sp]
    if bias is not None:
        bias = _pad(_pad(jnp.broadcast_to(bias, (b, 1, nq, s_len)), 2, qp_len), 3, sp_len)
    out = _flash(qg, _pad(k, 1, sp_len), _pad(v, 1, sp_len), bias,
                 (_pad(q_rank, 1, qp_len), _pad(q_noisy, 1, qp_len), _pad(k_rank, 1, sp_len),
                  _pad(k_valid, 1, sp_len, False), _pad(k_noisy, 1, sp_len, False), fill),
                 h ** -0.5, cq, ck)
    return out[:, :nq].reshape(b, nq, n, h)


def _tile(q_c, k_c, bias_c, vis, i, j, scale, cq, ck):
    """Scores of query chunk i (rows q_c [B, Cq, K, G, H]) against key chunk j -> (s [B, K, G, Cq,
    Ck] float32 with masked entries filled, allowed [B, 1, 1, Cq, Ck])."""
    q_rank, q_noisy, k_rank, k_valid, k_noisy, fill = vis
    qs = lambda x: None if x is None else jax.lax.dynamic_slice_in_dim(x, i * cq, cq, 1)
    ks = lambda x: None if x is None else jax.lax.dynamic_slice_in_dim(x, j * ck, ck, x.ndim - 1)
    allowed = allowed_mask(qs(q_rank), ks(k_rank), ks(k_valid), qs(q_noisy), ks(k_noisy))[:, :, None]
    s = jnp.einsum("BQKGH,BSKH->BKGQS", q_c, k_c, preferred_element_type=jnp.float32) * scale
    if bias_c is not None:
        s = s + bias_c[:, :, None].astype(jnp.float32)
    return jnp.where(allowed, s, ks(fill)), allowed


def _chunks(x, size, axis):
    """Chunk `axis` into [n, ..., size, ...] with the chunk index first (a scan's xs)."""
    shape = x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1:]
    return jnp.moveaxis(x.reshape(shape), axis, 0)


def _loop(body, carry, n):
    """lax.scan over range(n) without a loop when n == 1 (the common short-sequence case)."""
    if n == 1:
        carry, y = body(carry, jnp.int32(0))
        return carry, jax.tree.map(lambda a: a[None], y)
    return jax.lax.scan(body, carry, jnp.arange(n))


def _forward(q, k, v, bias, vis, scale, cq, ck):
    """-> out [B, Qp, K, G, H] in q's dtype, m and l [B, K, G, Qp] float32."""
    b, qp_len, kv, g, h = q.shape
    nq, nk = qp_len // cq, k.shape[1] // ck

    def q_step(_, i):
        q_c = jax.lax.dynamic_slice_in_dim(q, i * cq, cq, 1)
        b_c = None if bias is None else jax.lax.dynamic_slice_in_dim(bias, i * cq, cq, 2)

        def k_step(carry, j):
            m, l, acc = carry
            k_c, v_c = (jax.lax.dynamic_slice_in_dim(x, j * ck, ck, 1) for x in (k, v))
            bj = None if b_c is None else jax.lax.dynamic_slice_in_dim(b_c, j * ck, ck, 3)
            s, _ = _tile(q_c, k_c, bj, vis, i, j, scale, cq, ck)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            p = jnp.exp(s - m_new[..., None])
            a = jnp.exp(m - m_new)
            pv = jnp.einsum("BKGQS,BSKH->BKGQH", p.astype(v.dtype), v_c, preferred_element_type=jnp.float32)
            return (m_new, l * a + jnp.sum(p, axis=-1), acc * a[..., None] + pv), None

        init = (jnp.full((b, kv, g, cq), NEG, jnp.float32), jnp.zeros((b, kv, g, cq), jnp.float32),
                jnp.zeros((b, kv, g, cq, h), jnp.float32))
        (m, l, acc), _ = _loop(k_step, init, nk)
        out = jnp.einsum("BKGQH->BQKGH", acc / l[..., None]).astype(q.dtype)
        return None, (out, m, l)

    _, (out, m, l) = _loop(q_step, None, nq)            # [C, B, Cq, K, G, H], [C, B, K, G, Cq]
    out = jnp.moveaxis(out, 0, 1).reshape(q.shape)
    m, l = (jnp.moveaxis(x, 0, -2).reshape(b, kv, g, qp_len) for x in (m, l))
    return out, m, l


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _flash(q, k, v, bias, vis, scale, cq, ck):
    return _forward(q, k, v, bias, vis, scale, cq, ck)[0]


def _flash_fwd(q, k, v, bias, vis, scale, cq, ck):
    out, m, l = _forward(q, k, v, bias, vis, scale, cq, ck)
    return out, (q, k, v, bias, vis, out, m, l)


def _flash_bwd(scale, cq, ck, res, d_out):
    q, k, v, bias, vis, out, m, l = res
    b, qp_len, kv, g, h = q.shape
    nq, nk = qp_len // cq, k.shape[1] // ck
    delta = jnp.einsum("BQKGH,BQKGH->BKGQ", d_out.astype(jnp.float32), out.astype(jnp.float32))
    inv_l = 1.0 / l

    def q_step(carry, i):
        dk, dv = carry
        sl_q = lambda x, axis: jax.lax.dynamic_slice_in_dim(x, i * cq, cq, axis)
        q_c, do_c = sl_q(q, 1), sl_q(d_out, 1)
        m_c, il_c, dl_c = sl_q(m, 3), sl_q(inv_l, 3), sl_q(delta, 3)
        b_c = None if bias is None else sl_q(bias, 2)

        def k_step(carry, j):
            dq, dk, dv = carry
            k_c, v_c = (jax.lax.dynamic_slice_in_dim(x, j * ck, ck, 1) for x in (k, v))
            bj = None if b_c is None else jax.lax.dynamic_slice_in_dim(b_c, j * ck, ck, 3)
            s, allowed = _tile(q_c, k_c, bj, vis, i, j, scale, cq, ck)
            p = jnp.exp(s - m_c[..., None]) * il_c[..., None]                   # [B, K, G, Q, S]
            dv_j = jnp.einsum("BKGQS,BQKGH->BSKH", p.astype(do_c.dtype), do_c, preferred_element_type=jnp.float32)
            dp = jnp.einsum("BQKGH,BSKH->BKGQS", do_c, v_c, preferred_element_type=jnp.float32)
            ds = jnp.where(allowed, p * (dp - dl_c[..., None]), 0.0)
            d_bias = None if bj is None else jnp.sum(ds, axis=(1, 2))[:, None].astype(bias.dtype)
            ds = (ds * scale).astype(q.dtype)
            dq = dq + jnp.einsum("BKGQS,BSKH->BQKGH", ds, k_c, preferred_element_type=jnp.float32)
            dk_j = jnp.einsum("BKGQS,BQKGH->BSKH", ds, q_c, preferred_element_type=jnp.float32)
            add = lambda acc, x: jax.lax.dynamic_update_slice_in_dim(
                acc, jax.lax.dynamic_slice_in_dim(acc, j * ck, ck, 1) + x, j * ck, 1)
            return (dq, add(dk, dk_j), add(dv, dv_j)), d_bias

        (dq, dk, dv), d_bias = _loop(k_step, (jnp.zeros(q_c.shape, jnp.float32), dk, dv), nk)
        if d_bias is not None:   # [Ck-chunks, B, 1, Cq, Ck] -> [B, 1, Cq, Sp]
            d_bias = jnp.moveaxis(d_bias, 0, 3).reshape(b, 1, cq, nk * ck)
        return (dk, dv), (dq.astype(q.dtype), d_bias)

    zeros = jnp.zeros(k.shape, jnp.float32)
    (dk, dv), (dq, d_bias) = _loop(q_step, (zeros, zeros), nq)
    dq = jnp.moveaxis(dq, 0, 1).reshape(q.shape)
    if d_bias is not None:
        d_bias = jnp.moveaxis(d_bias, 0, 2).reshape(bias.shape)
    return dq, dk.astype(k.dtype), dv.astype(v.dtype), d_bias, None


_flash.defvjp(_flash_fwd, _flash_bwd)
