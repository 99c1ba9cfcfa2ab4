"""Model pieces against plain references: grouped MoE, chunked attention, KV cache, padding, FP8."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxdiff.model import KVCache, ModelOptions, Visibility, attend, build_model
from jaxdiff.model.layers import dequantize_blocks
from jaxdiff.model.moe import dense_reference_moe, grouped_swiglu, route
from tests.model import tiny


@pytest.mark.parametrize("impl", ["tiled", "ragged"])
@pytest.mark.parametrize("norm", [True, False])
def test_grouped_moe_equals_dense_reference(impl, norm):
    t, d, f, e, k = 37, 16, 24, 6, 2
    ks = jax.random.split(jax.random.key(0), 5)
    x = jax.random.normal(ks[0], (t, d))
    router, gate, up = (jax.random.normal(ks[1], (e, d)), jax.random.normal(ks[2], (e, f, d)) * 0.3,
                        jax.random.normal(ks[3], (e, f, d)) * 0.3)
    down = jax.random.normal(ks[4], (e, d, f)) * 0.3
    _, w, ex = route(x, router, k, norm)
    flat = ex.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    sizes = jnp.bincount(flat, length=e).astype(jnp.int32)
    ys = grouped_swiglu(x[order // k], (gate, None), (up, None), (down, None), sizes, impl) * w.reshape(-1)[order][:, None]
    y = jnp.zeros_like(x).at[order // k].add(ys)
    ref = dense_reference_moe(x, router, gate, up, down, k, norm)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)


def test_moe_model_impls_agree():
    cfg = tiny.moe()
    tokens = jnp.asarray(np.random.RandomState(1).randint(0, 256, (2, 20)))
    outs = []
    for impl in ("tiled", "ragged"):
        model = tiny.jitted(build_model(cfg, options=ModelOptions(moe_grouped_impl=impl)))
        outs.append(np.asarray(model(tokens)))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


@pytest.mark.parametrize("attention", ["causal", "bidirectional", "block"])
def test_chunked_attention_equals_reference(attention):
    cfg = tiny.dense()
    tokens = jnp.asarray(np.random.RandomState(2).randint(0, 256, (2, 37)))
    pad = jnp.asarray(np.arange(37)[None] >= np.array([[0], [5]]))  # row 1 left-padded by 5
    kw = dict(attention=attention, block_size=6, prompt_lengths=jnp.array([9, 4]), padding_mask=pad)
    model = lambda **o: tiny.jitted(build_model(cfg, seed=3, options=ModelOptions(**o)))
    ref = np.asarray(model(attention_impl="reference")(tokens, **kw))
    chunked = model(attention_impl="chunked", attention_chunk=8)   # 5 chunks, last one padded
    np.testing.assert_allclose(np.asarray(chunked(tokens, **kw)), ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model(attention_impl="fused")(tokens, **kw)), ref, atol=1e-5)


@pytest.mark.parametrize("attention", ["causal", "bidirectional", "block"])
def test_left_padding_does_not_change_real_tokens(attention):
    model = tiny.jitted(build_model(tiny.moe(), seed=4))
    real = np.random.RandomState(3).randint(0, 256, (1, 12))
    padded = np.concatenate([np.zeros((1, 4), int), real], 1)
    mask = np.arange(16)[None] >= 4
    kw = dict(attention=attention, block_size=3, prompt_lengths=jnp.array([5]))
    a = np.asarray(model(jnp.asarray(real), **kw))
    b = np.asarray(model(jnp.asarray(padded), padding_mask=jnp.asarray(mask), **kw))[:, 4:]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_block_cache_is_exact():
    """Prompt, then blocks committed one by one into the cache == one uncached block-mode pass."""
    cfg = tiny.moe()
    model = tiny.jitted(build_model(cfg, seed=5))
    rs = np.random.RandomState(4)
    prompt_len, block, n_blocks = 7, 4, 3
    tokens = jnp.asarray(rs.randint(0, 256, (2, prompt_len + block * n_blocks)))
    full = np.asarray(model(tokens, attention="block", block_size=block, prompt_lengths=jnp.array([7, 7])))
    cache = KVCache.empty(cfg, 2, prompt_len + block * n_blocks)
    logits, cache = model(tokens[:, :prompt_len], attention="block", cache=cache, commit=True)
    pieces = [np.asarray(logits)]
    for i in range(n_blocks):
        s = prompt_len + i * block
        logits, cache = model(tokens[:, s:s + block], attention="block", cache=cache, commit=True)
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, 1), full, atol=1e-5)
    assert int(cache.length) == tokens.shape[1]


def test_causal_cache_decode_equals_full_pass():
    cfg = tiny.dense(tie_word_embeddings=True)
    model = tiny.jitted(build_model(cfg, seed=6))
    tokens = jnp.asarray(np.random.RandomState(5).randint(0, 256, (2, 10)))
    full = np.asarray(model(tokens, attention="causal"))
    cache = KVCache.empty(cfg, 2, 10)
    logits, cache = model(tokens[:, :6], cache=cache, commit=True)
    steps = [np.asarray(logits)]
    for i in range(6, 10):
        logits, cache = model(tokens[:, i:i + 1], cache=cache, commit=True)
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


def test_uncommitted_call_leaves_cache_unchanged():
    cfg = tiny.dense()
    model = tiny.jitted(build_model(cfg))
    cache = KVCache.empty(cfg, 1, 8)
    _, cache = model(jnp.ones((1, 3), jnp.int32), attention="block", cache=cache, commit=True)
    _, same = model(jnp.ones((1, 4), jnp.int32), attention="block", cache=cache, commit=False)
    assert int(same.length) == 3
    jax.tree.map(np.testing.assert_array_equal, same, cache)   # keys, values and length as they were


def test_additive_bias_is_applied():
    q = jax.random.normal(jax.random.key(0), (1, 3, 2, 4))
    k = jax.random.normal(jax.random.key(1), (1, 3, 1, 4))
    v = jax.random.normal(jax.random.key(2), (1, 3, 1, 4))
    vis = Visibility(jnp.zeros((1, 3), jnp.int32), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3), bool))
    bias = jnp.array([[[[0.0, -1e9, -1e9]] * 3]])  # only key 0 visible
    out = attend(q, k, v, vis, bias=bias, impl="reference")
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(np.asarray(v[:, :1]), out.shape), atol=1e-6)


def test_dequantize_blocks_matches_numpy_with_ragged_edges():
    rs = np.random.RandomState(0)
    w = rs.randn(2, 300, 200).astype(np.float32)
    fp8 = w.astype(ml_dtypes.float8_e4m3fn)
    scale = rs.rand(2, 3, 2).astype(np.float32) + 0.5   # ceil(300/128)=3, ceil(200/128)=2
    ref = fp8.astype(np.float32).copy()
    for i in range(3):
        for j in range(2):
            ref[:, i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] *= scale[:, i, j][:, None, None]
    out = dequantize_blocks(jnp.asarray(fp8), jnp.asarray(scale), (128, 128), jnp.float32)
    np.testing.assert_array_equal(np.asarray(out), ref)
