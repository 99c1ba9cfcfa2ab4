"""Print the parameter tree of an HF folder or a jaxdiff checkpoint, or the difference of two.

    python tools/inspect_checkpoint.py /ckpt/Qwen3-0.6B
    python tools/inspect_checkpoint.py /ckpt/Qwen3-0.6B /ckpt/q06b-jd     # key/shape/dtype differences

Both kinds are shown in jaxdiff keys (per-expert HF tensors stacked on E), read from headers and
manifests only: no tensor data is loaded.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from jaxdiff.checkpoint import hf_keys
from jaxdiff.checkpoint.orbax_io import is_checkpoint, read_manifest
from jaxdiff.checkpoint.safetensors_io import CheckpointError, SafetensorsFolder


def tree(path: str) -> tuple[str, dict[str, tuple[tuple[int, ...], str]]]:
    """(kind, jaxdiff key -> (shape, dtype name))."""
    if is_checkpoint(path):
        m = read_manifest(path)
        return "jaxdiff", {k: (tuple(v["shape"]), v["dtype"]) for k, v in m["params"].items()}
    folder = SafetensorsFolder.open(path)
    out = {}
    for jd, parts in hf_keys.group_hf_keys(folder.tensors).items():
        first = folder.tensors[next(iter(parts.values()))]
        shape = first.shape if None in parts else (len(parts), *first.shape)
        out[jd] = (tuple(shape), first.dtype.name)
    return "hf", out


def _bytes(shape, dtype) -> int:
    return int(np.prod(shape)) * np.dtype(dtype).itemsize


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("path")
    p.add_argument("other", nargs="?")
    a = p.parse_args(argv)
    try:
        kind, t = tree(os.fspath(a.path))
        if a.other is None:
            width = max(len(k) for k in t)
            for k in sorted(t, key=hf_keys_sort):
                shape, dt = t[k]
                print(f"{k:{width}s}  {str(list(shape)):22s} {dt:14s} {_bytes(shape, dt):>14,d}")
            total = sum(_bytes(*v) for v in t.values())
            n = sum(int(np.prod(v[0])) for v in t.values())
            print(f"{kind} checkpoint: {len(t)} tensors, {n:,d} parameters, {total:,d} bytes")
            return 0
        kind2, t2 = tree(os.fspath(a.other))
    except CheckpointError as e:
        print(f"inspect_checkpoint: error: {e}", file=sys.stderr)
        return 2
    only1, only2 = sorted(set(t) - set(t2)), sorted(set(t2) - set(t))
    changed = sorted(k for k in set(t) & set(t2) if t[k] != t2[k])
    for k in only1:
        print(f"- {k} {list(t[k][0])} {t[k][1]}   (only in {a.path})")
    for k in only2:
        print(f"+ {k} {list(t2[k][0])} {t2[k][1]}   (only in {a.other})")
    for k in changed:
        print(f"~ {k} {list(t[k][0])} {t[k][1]} -> {list(t2[k][0])} {t2[k][1]}")
    same = len(set(t) & set(t2)) - len(changed)
    print(f"{same} identical, {len(changed)} changed, {len(only1)} only in first, {len(only2)} only in second")
    return 0 if not (only1 or only2 or changed) else 1


def hf_keys_sort(name: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split(".")]


if __name__ == "__main__":
    sys.exit(main())
