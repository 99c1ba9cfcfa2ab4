"""Backend attention kernels for the calls they express: cuDNN flash attention on NVIDIA GPUs
(`jax.nn.dot_product_attention(implementation="cudnn")`) and the Pallas splash-attention kernel on
TPUs. attention.py chooses (`select_impl`); every other call runs the chunked path of flash.py.

Both kernels see a causal or bidirectional call without a cache or bias, with the padding given as
key lengths (cuDNN) or key segment ids (splash): exactly the visibility rule when every row's real
tokens come first (`prefix_padded`, checked at run time by attention.py, which otherwise runs the
chunked path). Shapes as in attention.py: q [B, L, N, H], k / v [B, L, K, H].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KERNELS = ("cudnn", "splash")
KERNEL_OF_PLATFORM = {"cuda": "cudnn", "tpu": "splash"}
KINDS = ("causal", "bidirectional")
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
SPLASH_BLOCK = 128   # splash tiles are multiples of the TPU's 128 lanes


def platform() -> str:
    """This process's default backend, GPUs by vendor: cpu | cuda | rocm | tpu | ..."""
    name = jax.default_backend()
    if name == "gpu":
        version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
        return "rocm" if "rocm" in version else "cuda"
    return name


def unsupported(kernel: str, kind: str | None, q: jax.Array, k: jax.Array, bias: jax.Array | None) -> str:
    """Why `kernel` cannot run this call ("" when it can), from static facts only: the mode (kind),
    shapes, dtype and whether a bias is given."""
    if kind not in KINDS:
        return f"attention {kind or 'of unknown structure'!s} (the kernels take causal or bidirectional calls without a cache)"
    if bias is not None:
        return "an additive bias"
    if q.shape[1] != k.shape[1]:
        return f"{q.shape[1]} queries over {k.shape[1]} keys (a cached call)"
    h = q.shape[-1]
    if kernel == "cudnn":
        if q.dtype not in CUDNN_DTYPES:
            return f"dtype {q.dtype} (cuDNN flash attention takes bfloat16 or float16)"
        if h % 8 or h > 128:
            return f"head dim {h} (cuDNN takes a multiple of 8 up to 128)"
        return ""
    if kernel == "splash":
        if q.shape[1] % SPLASH_BLOCK:
            return f"length {q.shape[1]} (splash takes multiples of {SPLASH_BLOCK})"
        return ""
    raise ValueError(f"attention kernel {kernel!r}; choose from {KERNELS}")


def prefix_padded(k_valid: jax.Array) -> jax.Array:
    """Scalar bool: every row's real tokens are a non-empty prefix (no padding, or right padding)."""
    n = jnp.sum(k_valid, axis=1, keepdims=True)
    return jnp.all((k_valid == (jnp.arange(k_valid.shape[1])[None] < n)) & (n > 0))


def cudnn_attention(q, k, v, vis) -> jax.Array:
    """cuDNN flash attention: is_causal for causal calls, the padding as key lengths."""
    lengths = jnp.sum(vis.k_valid, axis=1, dtype=jnp.int32)
    return jax.nn.dot_product_attention(q, k, v, scale=q.shape[-1] ** -0.5, is_causal=vis.kind == "causal",
                                        key_value_seq_lengths=lengths, implementation="cudnn")


def splash_attention(q, k, v, vis, *, interpret: bool = False) -> jax.Array:
    """The Pallas splash kernel, MQA form per kv head (G query heads share one key/value head):
    a causal or full mask, the padding as key segment ids (queries segment 1, real keys 1, padding 0).
    interpret: run the kernel in the Pallas interpreter (tests on CPU)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, l, n, h = q.shape
    kv = k.shape[2]
    g = n // kv
    mask = (sm.CausalMask if vis.kind == "causal" else sm.FullMask)((l, l))
    kernel = sk.make_splash_mqa_single_device(sm.MultiHeadMask([mask] * g), interpret=interpret)
    seg = sk.SegmentIds(q=jnp.ones((b, l), jnp.int32), kv=vis.k_valid.astype(jnp.int32))
    qh = jnp.einsum("BLKGH->BKGLH", (q * h ** -0.5).astype(q.dtype).reshape(b, l, kv, g, h))
    kh, vh = (jnp.einsum("BLKH->BKLH", x) for x in (k, v))
    per_head = jax.vmap(lambda qq, kk, vv, s: kernel(qq, kk, vv, segment_ids=s), in_axes=(0, 0, 0, None))
    out = jax.vmap(per_head)(qh, kh, vh, seg)                           # [B, K, G, L, H]
    return jnp.einsum("BKGLH->BLKGH", out).reshape(b, l, n, h)
