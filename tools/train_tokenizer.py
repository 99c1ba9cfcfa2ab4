"""Train a byte-level BPE tokenizer (HF format) with jaxdiff's special tokens, for models trained
from scratch.

    python tools/train_tokenizer.py --out_dir runs/tok --vocab_size 4096            # on the stdlib
    python tools/train_tokenizer.py --out_dir runs/tok --source /src/myrepo --vocab_size 8192

Special tokens: <|endoftext|> (eos), <|pad|>, <|mask|>, <|im_start|>, <|im_end|>; a ChatML template.
"""
from __future__ import annotations

import argparse
import sys

from jaxdiff.data import sources
from jaxdiff.data.tokenizer import SPECIAL_TOKENS, train_bpe


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", required=True)
    p.add_argument("--source", default="", help="folder or glob of source files (default: the stdlib)")
    p.add_argument("--vocab_size", type=int, default=4096)
    p.add_argument("--max_files", type=int, default=0, help="train on at most this many files (0 = all)")
    a = p.parse_args(argv)
    try:
        files = sources.code_files(a.source or None)
    except sources.DataError as e:
        print(f"train_tokenizer: error: {e}", file=sys.stderr)
        return 2
    if a.max_files:
        files = files[::max(len(files) // a.max_files, 1)]
    tok = train_bpe((sources.read_file(f) for f in files), a.vocab_size, a.out_dir)
    print(f"trained a {len(tok)}-token BPE on {len(files)} files -> {a.out_dir} (special: {', '.join(SPECIAL_TOKENS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
