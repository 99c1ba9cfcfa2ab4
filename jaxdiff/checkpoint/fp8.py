"""Block-FP8 (e4m3) weights with one float32 `weight_scale_inv` per block, as in the Qwen3 / DeepSeek-V3
FP8 releases: dequantized = fp8.astype(f32) * scale_inv over each [bo, bi] block (edge blocks ragged)."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np

E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)
E4M3_MAX = 448.0


def _expand(scale: np.ndarray, shape: tuple[int, ...], block: tuple[int, int]) -> np.ndarray:
    bo, bi = block
    s = np.repeat(np.repeat(scale.astype(np.float32), bo, axis=-2), bi, axis=-1)
    return s[..., :shape[-2], :shape[-1]]


def scale_shape(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, ...]:
    return (*shape[:-2], math.ceil(shape[-2] / block[0]), math.ceil(shape[-1] / block[1]))


def quantize(w: np.ndarray, block: tuple[int, int] = (128, 128), scale_dtype=np.float32
             ) -> tuple[np.ndarray, np.ndarray]:
    """w [..., O, I] -> (e4m3 [..., O, I], scale_inv [..., ceil(O/bo), ceil(I/bi)] in scale_dtype).
    Each block's scale is amax / 448, so the block's largest element maps to e4m3's largest. A
    narrower scale_dtype (bfloat16) is rounded up, so no element lands beyond 448."""
    w = np.asarray(w, np.float32)
    bo, bi = block
    o, i = w.shape[-2:]
    po, pi = (-o) % bo, (-i) % bi
    padded = np.pad(w, [(0, 0)] * (w.ndim - 2) + [(0, po), (0, pi)])
    blocks = padded.reshape(*w.shape[:-2], (o + po) // bo, bo, (i + pi) // bi, bi)
    amax = np.abs(blocks).max(axis=(-3, -1))
    scale = np.where(amax > 0, amax / E4M3_MAX, 1.0).astype(np.float32)
    if np.dtype(scale_dtype) != np.float32:
        narrow = scale.astype(scale_dtype)
        low = narrow.astype(np.float32) < scale
        narrow[low] = np.nextafter(narrow[low], np.array(np.inf, scale_dtype))
        scale = narrow
    # amax / (amax / 448) can round a hair above 448; e4m3fn has no inf, so clip before the cast.
    q = np.clip(w / _expand(scale.astype(np.float32), w.shape, block), -E4M3_MAX, E4M3_MAX).astype(E4M3)
    return q, scale


def dequantize(q: np.ndarray, scale_inv: np.ndarray, block: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """e4m3 [..., O, I] * scale_inv [..., ceil(O/bo), ceil(I/bi)] per block -> dtype.
    Goes one row of blocks at a time, so the float32 temporaries are 1/ceil(O/bo) of the weight."""
    q, scale_inv = np.asarray(q), np.asarray(scale_inv)
    want = scale_shape(q.shape, block)
    if scale_inv.shape != want:
        raise ValueError(f"scale_inv shape {list(scale_inv.shape)} does not fit weight {list(q.shape)} "
                         f"with blocks {list(block)} (expected {list(want)})")
    bo, bi = block
    o, i = q.shape[-2:]
    out = np.empty(q.shape, dtype)
    for r in range(want[-2]):
        rows = slice(r * bo, min(o, (r + 1) * bo))
        cols = np.repeat(scale_inv[..., r, :].astype(np.float32), bi, axis=-1)[..., None, :i]  # [..., 1, I]
        out[..., rows, :] = q[..., rows, :].astype(np.float32) * cols
    return out
