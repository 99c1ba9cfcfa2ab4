"""A suite's prompt/answer pairs as an SFT file for `data.kind="sft"` (raw completion rows).

    python -m jaxdiff.eval.export_sft --suite synthetic-train --out runs/synthetic_train.jsonl

One `{"id", "prompt", "answer"}` line per task (`sft_pairs`): prompt + answer is the solved
program, and the trainer tokenizes the prompt, then the answer, then EOS (no chat template).
"""
from __future__ import annotations

import argparse
import json
import os

from jaxdiff.eval.suites import load_suite
from jaxdiff.eval.tasks import sft_pairs


def export(suite: str, out: str) -> int:
    """Writes `out` (folders made as needed); returns the number of rows."""
    pairs = sft_pairs(load_suite(suite))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    return len(pairs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", required=True, help="suite name (jaxdiff.eval.SUITES) or a problem file")
    ap.add_argument("--out", required=True, help="the .jsonl to write")
    a = ap.parse_args(argv)
    print(f"{a.out}: {export(a.suite, a.out)} rows from {a.suite}")


if __name__ == "__main__":
    main()
