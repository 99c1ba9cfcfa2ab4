"""Convert a Hugging Face Qwen3 / Qwen3-MoE folder into a jaxdiff checkpoint.

    python tools/convert_hf.py --hf_dir /ckpt/Qwen3-Coder-30B-A3B-Instruct-FP8 --out_dir /ckpt/coder30b-jd
    python tools/convert_hf.py --hf_dir /ckpt/Qwen3-0.6B --out_dir /ckpt/q06b-f32 --dtype float32

--dtype keep (default) keeps the checkpoint's dtypes (FP8 stays e4m3 + block scales); float32 or
bfloat16 casts and dequantizes FP8. Shards are memory-mapped and written one layer at a time.
"""
from __future__ import annotations

import argparse
import sys

from jaxdiff.checkpoint.convert import DTYPE_POLICIES, convert_hf
from jaxdiff.checkpoint.safetensors_io import CheckpointError
from jaxdiff.model.config import ConfigError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hf_dir", required=True, help="HF folder: config.json + model*.safetensors")
    p.add_argument("--out_dir", required=True, help="where the jaxdiff checkpoint is written")
    p.add_argument("--dtype", choices=DTYPE_POLICIES, default="keep")
    p.add_argument("--overwrite", action="store_true", help="replace an existing out_dir (only once complete)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    try:
        s = convert_hf(a.hf_dir, a.out_dir, dtype=a.dtype, overwrite=a.overwrite, progress=not a.quiet)
    except (CheckpointError, ConfigError) as e:
        print(f"convert_hf: error: {e}", file=sys.stderr)
        return 2
    print(f"converted {s['params'] / 1e6:.1f}M params, {s['bytes'] / 1e9:.3f} GB in {s['seconds']:.1f} s "
          f"({s['gb_per_s']:.2f} GB/s) -> {s['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
