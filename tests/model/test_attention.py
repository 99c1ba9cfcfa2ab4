"""Attention implementations against the reference path (fp32, values and gradients <= 1e-4), the
chunked path's memory bound, and the choice of backend kernel by platform.

Inputs come from the model's own descriptor builders (visibility_ranks, block_diffusion_layout), so
every mode's rule is the one the model uses; chunks are small (8 queries, 16 keys) so every case
spans several tiles in both directions and pads the last of each."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff.model import ModelOptions
from jaxdiff.model import attention_backends as backends
from jaxdiff.model.attention import Visibility, attend, select_impl
from jaxdiff.model.transformer import block_diffusion_layout, token_positions, visibility_ranks

B, N, K, H = 3, 4, 2, 16
PLEN = jnp.array([9, 4, 0])


def _case(mode: str, length: int = 37, past: int = 0):
    """(Visibility, query length, key length) for `mode`. Row 1 is left-padded by 5; row 2 of a
    cached call sees no key at all (its cache slots and its own tokens are all invalid)."""
    rs = np.random.RandomState(0)
    valid = jnp.asarray(np.arange(length)[None] >= np.array([[0], [5], [0]]))
    if mode == "block_diffusion":
        half = valid[:, :length // 2]
        valid = jnp.concatenate([half, half], 1)
        pos, noisy = block_diffusion_layout(valid)
        rank = visibility_ranks("block_diffusion", pos, block_size=4, prompt_lengths=PLEN)
        return Visibility(rank, rank, valid, noisy, noisy, kind=mode), valid.shape[1], valid.shape[1]
    rank = visibility_ranks(mode, token_positions(valid), block_size=4, prompt_lengths=PLEN)
    if not past:
        return Visibility(rank, rank, valid, kind=mode), length, length
    cache_valid = jnp.asarray(rs.rand(B, past) < 0.7).at[2].set(False)
    valid = valid.at[2].set(False)
    k_rank = jnp.concatenate([jnp.asarray(rs.randint(0, 3, (B, past))), rank + 3], 1)
    return Visibility(rank + 3, k_rank, jnp.concatenate([cache_valid, valid], 1), kind="cached"), length, length + past


def _qkv(nq, nk, dtype=jnp.float32):
    ks = jax.random.split(jax.random.key(1), 4)
    return (jax.random.normal(ks[0], (B, nq, N, H), dtype), jax.random.normal(ks[1], (B, nk, K, H), dtype),
            jax.random.normal(ks[2], (B, nk, K, H), dtype), jax.random.normal(ks[3], (B, nq, N, H), jnp.float32))


@pytest.mark.parametrize("mode, past, with_bias, split", [
    ("causal", 0, False, False), ("bidirectional", 0, False, False), ("block", 0, False, False),
    ("block", 21, False, False),            # a KV-cache prefix of 21 slots, one row seeing nothing
    ("block_diffusion", 0, True, False),    # x0 ⊕ xt (noisy flags) and an additive bias, its gradient included
    ("block", 21, False, True),             # the batch as 3 groups (flash.batch_groups), each its own VJP
    ("block_diffusion", 0, True, True),
])
def test_chunked_equals_reference_values_and_gradients(mode, past, with_bias, split, monkeypatch):
    from jaxdiff.model import flash
    if split:   # a group's tile budget of one row's 8 x 16 tile over 4 heads: 3 groups of 1 row
        monkeypatch.setattr(flash, "GROUP_TILE_ELEMENTS", N * 8 * 16)
        assert flash.batch_groups(B, N * 8 * 16) == 3
    vis, nq, nk = _case(mode, past=past)
    q, k, v, w = _qkv(nq, nk)
    bias = jax.random.normal(jax.random.key(2), (B, 1, nq, nk)) if with_bias else None

    def out_and_grads(impl, q, k, v, bias):
        f = lambda q, k, v, *bias: attend(q, k, v, vis, bias=bias[0] if bias else None, impl=impl, chunk=8,
                                          key_chunk=16)
        out, vjp = jax.vjp(f, q, k, v, *(() if bias is None else (bias,)))
        return out, vjp(w)

    (ref_out, ref), (out, got) = (jax.jit(out_and_grads, static_argnums=0)(impl, q, k, v, bias)
                                  for impl in ("reference", "chunked"))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=1e-4, rtol=0)
    for name, a, b in zip("qkvb", got, ref):
        assert np.abs(np.asarray(b)).max() > 1e-3, name   # a gradient that really flows
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, rtol=0, err_msg=f"d{name}")


def test_tiles_are_balanced_not_padded_to_whole_chunks():
    """As many tiles as whole chunks would need, none larger than the chunk, padding below one row per
    tile (x0 ⊕ xt of a 264-token row: 528 keys as 2 x 264, not 2 x 512)."""
    from jaxdiff.model.flash import tile_size
    for length, chunk in [(528, 512), (264, 128), (37, 8), (37, 16), (512, 512), (100, 128), (1, 8), (1025, 512)]:
        size = tile_size(length, chunk)
        tiles = -(-length // size)
        assert size <= chunk and tiles == -(-length // chunk), (length, chunk)
        assert tiles * size - length < tiles, (length, chunk)
    assert tile_size(528, 512) == 264 and tile_size(264, 128) == 88


def test_chunked_backward_never_holds_the_score_matrix():
    """At L = S = 512 with 64-row, 128-key tiles, no buffer of the compiled forward+backward has a
    [.., 512, 512] score shape, and its temporaries stay under half of one [B, N, L, S] float32
    array (the reference path's are 3.5 such arrays)."""
    vis, nq, nk = _case("block_diffusion", length=512)   # x0 ⊕ xt of two 256-token halves
    q, k, v, w = _qkv(nq, nk)
    loss = lambda q, k, v: jnp.sum(attend(q, k, v, vis, impl="chunked", chunk=64, key_chunk=128) * w)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()
    assert "512,512]" not in compiled.as_text()
    assert compiled.memory_analysis().temp_size_in_bytes < B * N * nq * nk * 4 / 2


def _select(platform, kind="causal", dtype=jnp.bfloat16, length=256, keys=None, bias=False, impl="auto"):
    q = jax.ShapeDtypeStruct((2, length, 8, 128), dtype)
    k = jax.ShapeDtypeStruct((2, keys or length, 4, 128), dtype)
    vis = Visibility(None, None, None, kind=kind)
    return select_impl(impl, platform=platform, vis=vis, q=q, k=k, bias=jnp.zeros(()) if bias else None)


def test_backend_selection_by_platform_with_override():
    for kind in ("causal", "bidirectional", "block", "block_diffusion", "cached"):
        assert _select("cpu", kind) == "chunked"
        assert _select("rocm", kind) == "chunked"
    for platform, kernel in (("cuda", "cudnn"), ("tpu", "splash")):
        assert _select(platform, "causal") == _select(platform, "bidirectional") == kernel
        for kind in ("block", "block_diffusion", "cached", None):
            assert _select(platform, kind) == "chunked", (platform, kind)
        assert _select(platform, "causal", keys=288) == "chunked"          # a cache prefix
        assert _select(platform, "causal", bias=True) == "chunked"
        assert _select(platform, "causal", impl="chunked") == "chunked"    # the override wins
        assert _select(platform, "causal", impl="reference") == "reference"
    assert _select("cuda", dtype=jnp.float32) == "chunked"                 # cuDNN flash: 16-bit only
    assert _select("tpu", dtype=jnp.float32) == "splash"
    assert _select("tpu", length=200) == "chunked"                        # splash tiles of 128
    with pytest.raises(ValueError, match="cannot run this call: attention block_diffusion"):
        _select("cuda", "block_diffusion", impl="cudnn")
    with pytest.raises(ValueError, match="dtype float32"):
        _select("cpu", dtype=jnp.float32, impl="cudnn")
    with pytest.raises(ValueError, match="choose from"):
        _select("cpu", impl="flash")
    with pytest.raises(ValueError, match="attention_impl"):
        ModelOptions(attention_impl="flash")
    assert ModelOptions().attention_impl == "auto"


def test_prefix_padding_check():
    rows = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]], bool)
    expect = [True, True, False, False, False]
    assert [bool(backends.prefix_padded(jnp.asarray(r[None]))) for r in rows] == expect


def test_splash_kernel_interpreted_equals_reference(kind="causal"):
    """The splash wrapper (MQA per kv head, scale, causal mask, segment ids for padding) run by the
    Pallas interpreter on CPU, row 1 right-padded: values and gradients against the reference."""
    b, length, n, kv, h = 2, 128, 2, 1, 64
    valid = jnp.asarray(np.arange(length)[None] < np.array([[length], [100]]))
    ranks = visibility_ranks(kind, token_positions(valid))
    vis = Visibility(ranks, ranks, valid, kind=kind)
    ks = jax.random.split(jax.random.key(3), 4)
    q, k, v = (jax.random.normal(key, (b, length, heads, h)) for key, heads in zip(ks, (n, kv, kv)))
    w = jax.random.normal(ks[3], (b, length, n, h))
    kernels = {"splash": lambda q, k, v: backends.splash_attention(q, k, v, vis, interpret=True),
               "reference": lambda q, k, v: attend(q, k, v, vis, impl="reference")}
    (out, grads), (ref_out, ref) = ((lambda o, vjp: (o, vjp(w)))(*jax.vjp(f, q, k, v))
                                    for f in (kernels["splash"], kernels["reference"]))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref_out), atol=1e-4, rtol=0)
    for name, a, r in zip("qkv", grads, ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-4, rtol=0, err_msg=f"d{name}")


def _cuda_devices():
    try:
        return [d for d in jax.devices("gpu") if "cuda" in str(d.client.platform_version).lower()]
    except RuntimeError:
        return []


@pytest.mark.skipif(not _cuda_devices(), reason="needs a CUDA GPU (cuDNN flash attention)")
def test_cudnn_custom_call_in_compiled_gpu_step():
    """On a CUDA GPU, "auto" lowers a bf16 causal call (forward and backward) to cuDNN's fused
    attention custom call, and the block-diffusion call to the chunked path (no such call)."""
    device = _cuda_devices()[0]
    vis, nq, nk = _case("causal", length=64)
    q, k, v, w = (jax.device_put(x.astype(jnp.bfloat16), device) for x in _qkv(nq, nk))
    grad = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attend(q, k, v, vis, platform="cuda") * w), argnums=(0, 1, 2)))
    text = grad.lower(q, k, v).compile().as_text()
    assert "__cudnn$fmha" in text
    vis_bd, nq, nk = _case("block_diffusion", length=64)
    q, k, v, w = (jax.device_put(x.astype(jnp.bfloat16), device) for x in _qkv(nq, nk))
    text = jax.jit(lambda q, k, v: attend(q, k, v, vis_bd, platform="cuda")).lower(q, k, v).compile().as_text()
    assert "__cudnn$fmha" not in text
