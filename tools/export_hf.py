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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ckpt_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        s = export_hf(a.ckpt_dir, a.out_dir, overwrite=a.overwrite, progress=not a.quiet)
    except (CheckpointError, ConfigError) as e:
        print(f"export_hf: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {s['bytes'] / 1e9:.3f} GB in {s['files']} file(s) -> {s['out_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
