"""Export a jaxdiff checkpoint as a Hugging Face folder that transformers loads.

    python tools/export_hf.py --ckpt_dir /ckpt/coder30b-jd --out_dir /ckpt/coder30b-hf

Tensor names, dtypes and the split into files follow the HF folder the checkpoint was converted
from (FP8 stays e4m3 + `weight_scale_inv`); tokenizer files travel along.
"""
from __future__ import annotations

import argparse
import sys

from jaxdiff.checkpoint.convert import export_hf
from jaxdiff.checkpoint.safetensors_io import CheckpointError
from jaxdiff.model.config import ConfigError


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """'5GB' -> 5_000_000_000 (decimal units, as transformers' max_shard_size; KiB/MiB/GiB binary)."""
    t = text.strip().upper()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if t.endswith(unit) and t[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(unit)]) * _UNITS[unit])
    if t.isdigit():
        return int(t)
    raise CheckpointError(f"--max_shard_size {text!r}: expected a size such as 5GB, 500MB or 300KB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--max_shard_size", default="5GB",
                   help="file size limit when the source layout is unknown (e.g. after --dtype float32): 5GB, 300KB")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        s = export_hf(a.ckpt_dir, a.out_dir, overwrite=a.overwrite, progress=not a.quiet,
                      max_shard_bytes=parse_size(a.max_shard_size))
    except (CheckpointError, ConfigError) as e:
        print(f"export_hf: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {s['bytes'] / 1e9:.3f} GB in {s['files']} file(s) -> {s['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
