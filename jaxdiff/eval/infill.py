"""Infilling tasks cut from HumanEval's canonical solutions (in the spirit of HumanEval-Infilling).

    infilling("single")     one line of a canonical solution to fill, `SINGLE_PER_PROBLEM` per problem
    infilling("multi")      2-4 consecutive lines, `MULTI_PER_PROBLEM` per problem
    synthetic_infilling()   one line of each synthetic held-out-constant task's body ("synthetic-infill")

The prompt is the problem's prompt plus the solution's lines before the span, `suffix` the lines
after it, `reference` the span, and the tests are HumanEval's. Spans are whole lines (with their
newline) of non-blank code, chosen by a generator seeded with (seed, task id), so the suite is the
same on every machine. `meta` records the span's length in characters and lines and where it starts.

Mutants (wrong spans the tests reject) are single-token edits of the span (a comparison or
arithmetic operator swapped, an integer constant off by one, `and`/`or`, `True`/`False`). Which edits
the tests reject was decided once by running every candidate through the verifier pool
(`python -m jaxdiff.eval.infill --write-mutants`) and is stored as edit descriptors in
`data/infill_mutants.json` (only edits that fail quickly: no timeouts). tests/eval proves the file
right: every stored mutant fails and every reference passes, through the pool.

`synthetic_infilling` is the small-model counterpart, cut from the synthetic family's held-out
split of new constants (the tasks the SFT tiny coder is measured on): one line of the reference
body, chosen by a generator seeded with (seed, task id); the span is that line without its newline,
cut where a BPE cuts: after a leading `return` (the span carries the constants to copy and its
leading space, ` x + 121`) or else at the line's start (with its indentation). The prefix is the
prompt plus everything before, the suffix the line's newline and the lines after. Mutants are the task's own mutants where they differ from the reference in that
span alone (off-by-one and wrong-operator mutants; a swapped branch changes two lines and is left out).
"""

from __future__ import annotations

import argparse
import ast
import functools
import io
import json
import os
import random
import sys
import tokenize

from jaxdiff.eval.humaneval import humaneval
from jaxdiff.eval.synthetic import synthetic
from jaxdiff.eval.tasks import Mutant, Task

KINDS = ("single", "multi")
SINGLE_PER_PROBLEM = 2
MULTI_PER_PROBLEM = 1
MULTI_LINES = (2, 4)
MAX_MUTANTS = 3
MUTANTS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "infill_mutants.json")
_SWAPS = {"+": "-", "-": "+", "*": "+", "//": "/", "%": "//", "<": "<=", "<=": "<", ">": ">=", ">=": ">",
          "==": "!=", "!=": "==", "and": "or", "or": "and", "True": "False", "False": "True"}
_KIND = {"<": "off_by_one", "<=": "off_by_one", ">": "off_by_one", ">=": "off_by_one", "==": "negated",
         "!=": "negated", "True": "negated", "False": "negated"}


def infilling(kind: str = "single", seed: int = 0, problems: list[Task] | None = None,
              with_mutants: bool = True) -> list[Task]:
    if kind not in KINDS:
        raise ValueError(f"unknown infilling kind {kind!r}; kinds: {KINDS}")
    if problems is None:
        return list(_cached(kind, seed, with_mutants))
    return _build(kind, seed, problems, with_mutants)


@functools.lru_cache(maxsize=4)
def _cached(kind, seed, with_mutants):
    return tuple(_build(kind, seed, humaneval(), with_mutants))


def _build(kind, seed, problems, with_mutants) -> list[Task]:
    stored = _stored_mutants() if with_mutants else {}
    out = []
    for p in problems:
        lines = (p.reference or "").splitlines(keepends=True)
        code = [i for i, line in enumerate(lines) if line.strip() and not line.strip().startswith("#")]
        rng = random.Random(f"{seed}:{kind}:{p.id}")
        if kind == "single":
            spans = [(i, i + 1) for i in sorted(rng.sample(code, min(SINGLE_PER_PROBLEM, len(code))))]
        else:
            starts = [(i, i + n) for i in code for n in range(MULTI_LINES[0], MULTI_LINES[1] + 1)
                      if i + n <= len(lines) and lines[i + n - 1].strip()]
            spans = sorted(rng.sample(starts, min(MULTI_PER_PROBLEM, len(starts))))
        for a, b in spans:
            span = "".join(lines[a:b])
            tid = f"{p.id}/{kind}/{a}-{b}"
            prefix, suffix = p.prompt + "".join(lines[:a]), "".join(lines[b:])
            mutants = tuple(Mutant(_kind_of(e), apply_edit(span, e)) for e in stored.get(tid, ()))
            out.append(Task(id=tid, prompt=prefix, suffix=suffix, infill=True, language="python",
                            entry_point=p.entry_point, tests=p.tests, reference=span,
                            suite=f"humaneval-infill-{kind}", family=p.id, mutants=mutants,
                            meta={"span_chars": len(span), "span_lines": b - a, "span_start_line": a}))
    return out


def synthetic_infilling(split: str = "heldout_constants", seed: int = 0) -> list[Task]:
    """One span per task of the synthetic family's `split` (see the module docstring)."""
    return list(_synthetic_cached(split, seed))


@functools.lru_cache(maxsize=2)
def _synthetic_cached(split, seed):
    out = []
    for p in synthetic(split):
        lines = p.reference.splitlines(keepends=True)
        code = [i for i, line in enumerate(lines) if line.strip()]
        i = random.Random(f"{seed}:synthetic:{p.id}").choice(code)
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        # cut where the tokenizer cuts: after `return` (the span keeps its leading space, " x + 121"),
        # else at the line's start (the span keeps its indentation)
        start = indent + len("return") if line[indent:].startswith("return ") else 0
        end = len(line.rstrip("\n"))
        before, after = "".join(lines[:i]) + line[:start], line[end:] + "".join(lines[i + 1:])
        span = line[start:end]
        mutants = tuple(Mutant(m.kind, m.completion[len(before):len(m.completion) - len(after)])
                        for m in p.mutants
                        if m.completion.startswith(before) and m.completion.endswith(after)
                        and len(m.completion) > len(before) + len(after))
        out.append(Task(id=f"{p.id}/infill/{i}", prompt=p.prompt + before, suffix=after, infill=True,
                        language="python", entry_point=p.entry_point, tests=p.tests, reference=span,
                        suite="synthetic-infill", family=p.family, mutants=mutants,
                        meta={"span_chars": len(span), "span_line": i, "source": p.id}))
    return tuple(out)


# -- mutants -----------------------------------------------------------------------------------

def candidate_edits(span: str, limit: int = 8) -> list[list]:
    """Single-token edits [row, col, old, new] of a span (rows 1-based within the span), in order."""
    edits = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(span).readline):
            if tok.type in (tokenize.OP, tokenize.NAME) and tok.string in _SWAPS:
                edits.append([tok.start[0], tok.start[1], tok.string, _SWAPS[tok.string]])
            elif tok.type == tokenize.NUMBER and tok.string.isdigit():
                edits.append([tok.start[0], tok.start[1], tok.string, str(int(tok.string) + 1)])
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # a span that does not tokenise alone (an open bracket): use what was found
    return edits[:limit]


def apply_edit(span: str, edit) -> str:
    row, col, old, new = edit
    lines = span.splitlines(keepends=True)
    line = lines[row - 1]
    if line[col:col + len(old)] != old:
        raise ValueError(f"edit {edit} does not match the span line {line!r}")
    lines[row - 1] = line[:col] + new + line[col + len(old):]
    return "".join(lines)


def _kind_of(edit) -> str:
    if edit[2].isdigit():
        return "off_by_one"
    return _KIND.get(edit[2], "wrong_operator")


@functools.lru_cache(maxsize=1)
def _stored_mutants() -> dict:
    try:
        with open(MUTANTS_FILE, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def write_mutants(pool, seed: int = 0, path: str = MUTANTS_FILE) -> dict:
    """Run every candidate edit of every infilling task through `pool` and store, per task, the
    first MAX_MUTANTS edits whose program fails or errors (not timeouts: they would slow every check)."""
    table, jobs, owners = {}, [], []
    for kind in KINDS:
        for t in infilling(kind, seed, with_mutants=False):
            for e in candidate_edits(t.reference):
                mutated = apply_edit(t.reference, e)
                program = t.program(mutated)
                try:
                    ast.parse(program)
                except SyntaxError:
                    continue
                jobs.append(t.job(mutated, id=f"{t.id}@{len(jobs)}"))
                owners.append((t.id, e))
    for (tid, e), r in zip(owners, pool.run(jobs)):
        if r["status"] in ("failed", "error") and len(table.setdefault(tid, [])) < MAX_MUTANTS:
            table[tid].append(e)
    table = {k: v for k, v in sorted(table.items()) if v}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in table.items()) + "\n}\n")
    _stored_mutants.cache_clear()
    _cached.cache_clear()
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-mutants", action="store_true", help=f"recompute {MUTANTS_FILE} through the verifier pool")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    if not args.write_mutants:
        for kind in KINDS:
            tasks = infilling(kind)
            print(f"{kind}: {len(tasks)} tasks, {sum(len(t.mutants) for t in tasks)} mutants")
        return 0
    from jaxdiff.eval.verdicts import make_pool
    with make_pool(workers=args.workers) as pool:
        table = write_mutants(pool)
    print(f"{sum(len(v) for v in table.values())} mutants for {len(table)} tasks -> {MUTANTS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
