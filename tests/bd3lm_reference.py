"""A plain NumPy transcription of BD3LM (kuleshov-group/bd3lms, diffusion.py and models/dit.py):
`_sample_t`, `block_diff_mask` over its xt ⊕ x0 layout, and the loss of its SUBS parameterisation,
with a float64 forward pass of the tiny dense Qwen3 the tests use. Blocks are aligned to a row's
prompt end (BD3LM's idx // block_size when there is no prompt)."""
import numpy as np

MASK = 255


def np_sample_t(u, t_min, t_max, antithetic=True):
    """BD3LM `_sample_t` given its uniforms u [B, n_blocks]."""
    b, nb = u.shape
    if antithetic:
        offset = np.arange(b * nb).reshape(b, nb) / (b * nb)
        u = (u / (b * nb) + offset) % 1
    return u * (t_max - t_min) + t_min


def np_block_diff_mask(block_id):
    """BD3LM `block_diff_mask` over its layout xt ⊕ x0 (n = L tokens each), with the block index of
    each position given (BD3LM's idx // block_size; here aligned to the prompt's end), returned in
    jaxdiff's order x0 ⊕ xt. [2L, 2L] bool, query rows."""
    n = len(block_id)
    idx = np.arange(2 * n)
    x0_flag = idx >= n                                  # BD3LM: the second half is x0
    block = block_id[idx % n]
    q_x0, kv_x0 = x0_flag[:, None], x0_flag[None, :]
    bq, bkv = block[:, None], block[None, :]
    block_diagonal = (bq == bkv) & (q_x0 == kv_x0)
    offset_block_causal = (bq > bkv) & kv_x0 & ~q_x0
    block_causal = (bq >= bkv) & kv_x0 & q_x0
    mask = block_diagonal | offset_block_causal | block_causal
    order = np.concatenate([np.arange(n, 2 * n), np.arange(n)])   # x0 ⊕ xt
    return mask[np.ix_(order, order)]


def _rms(x, w, eps):
    return w * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)


def np_forward(params, cfg, tokens, positions, allowed):
    """The tiny dense Qwen3 in float64: tokens [T], positions [T], allowed [T, T] -> logits [T, V]."""
    f = lambda name: np.asarray(params[name], np.float64)
    h, n, kv, eps = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rms_norm_eps
    inv = 1.0 / cfg.rope.theta ** (np.arange(0, h, 2) / h)
    ang = positions[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rope = lambda x: x * cos[:, None] + np.concatenate([-x[..., h // 2:], x[..., :h // 2]], -1) * sin[:, None]
    x = f("embed")[tokens]
    for i in range(cfg.num_hidden_layers):
        p = lambda k: f(f"{i}.{k}")
        a = _rms(x, p("input_layernorm"), eps)
        q = rope(_rms((a @ p("q_proj").T).reshape(-1, n, h), p("q_norm"), eps))
        k = rope(_rms((a @ p("k_proj").T).reshape(-1, kv, h), p("k_norm"), eps))
        v = (a @ p("v_proj").T).reshape(-1, kv, h)
        k, v = np.repeat(k, n // kv, axis=1), np.repeat(v, n // kv, axis=1)   # query head j uses kv head j // G
        s = np.einsum("qnh,snh->nqs", q, k) / np.sqrt(h)
        s = np.where(allowed[None], s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        x = x + np.einsum("nqs,snh->qnh", w, v).reshape(len(tokens), n * h) @ p("o_proj").T
        a = _rms(x, p("post_attention_layernorm"), eps)
        g = a @ p("gate_proj").T
        x = x + ((g / (1 + np.exp(-g))) * (a @ p("up_proj").T)) @ p("down_proj").T
    return _rms(x, f("norm"), eps) @ f("lm_head").T


def np_bd3lm_loss(params, cfg, x0, xt, t, plen, valid, eligible, block_size):
    """BD3LM's loss over a batch: per row the 2L forward under `block_diff_mask` (padding keys, at
    a row's end, unseen), -log p(x0) of the noisy copy's masked tokens times 1/t (SUBS: unmasked
    tokens contribute 0), summed, over the number of eligible tokens."""
    total = 0.0
    for r in range(x0.shape[0]):
        pos = np.arange(x0.shape[1])
        block_id = np.where(pos < plen[r], 0, 1 + (pos - plen[r]) // block_size)
        allowed = np_block_diff_mask(block_id) & np.tile(valid[r], 2)[None]
        logits = np_forward(params, cfg, np.concatenate([x0[r], xt[r]]), np.concatenate([pos, pos]),
                            allowed)[x0.shape[1]:]
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        nll = -logp[pos, x0[r]]
        total += np.sum(np.where(xt[r] == MASK, nll / t[r], 0.0))
    return total / eligible.sum()
