"""Where training text comes from: source files, jsonl/parquet/text files, `datasets` datasets,
and conversations for SFT. Every source is read up front far enough to fail fast with its path;
malformed rows are counted and reported with their line numbers, never silently dropped."""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sysconfig

TEXT_FIELDS = ("text", "content", "code", "source")


class DataError(ValueError):
    """Unreadable or empty input; the message names the path."""


@dataclasses.dataclass
class RowReport:
    """Malformed rows of one source: a count and the first few with their line numbers."""

    source: str
    bad: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)
    keep: int = 5

    def add(self, line: int, reason: str) -> None:
        self.bad += 1
        if len(self.examples) < self.keep:
            self.examples.append(f"{self.source}:{line}: {reason}")

    def summary(self, total: int) -> str:
        if not self.bad:
            return f"{self.source}: {total} rows, none malformed"
        return (f"{self.source}: {self.bad} of {total} rows malformed and skipped; first ones:\n  "
                + "\n  ".join(self.examples))


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def code_files(root: str | None = None, suffixes=(".py",)) -> list[str]:
    """Sorted source files under `root` (a folder or a glob); default: the running interpreter's
    standard library (site-packages excluded), so the default corpus needs no download."""
    root = root or stdlib_root()
    if any(ch in root for ch in "*?["):
        paths = glob.glob(root, recursive=True)
    elif os.path.isdir(root):
        paths = []
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x not in ("site-packages", "dist-packages", "__pycache__"))
            paths.extend(os.path.join(d, f) for f in files)
    elif os.path.isfile(root):
        paths = [root]
    else:
        raise DataError(f"{root}: no such file, folder or glob")
    paths = sorted(p for p in paths if p.endswith(tuple(suffixes)) and os.path.isfile(p))
    if not paths:
        raise DataError(f"{root}: no {'/'.join(suffixes)} files found")
    return paths


def read_file(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def is_heldout(name: str, permille: int) -> bool:
    """Deterministic split by document name: the same file is held out on every host and run."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) % 1000 < permille


def _detect_field(row: dict, field: str | None, where: str) -> str:
    if field:
        return field
    for f in TEXT_FIELDS:
        if isinstance(row.get(f), str):
            return f
    raise DataError(f"{where}: no text field found (looked for {', '.join(TEXT_FIELDS)}); name one with text_field")


def text_records(path: str, text_field: str | None = None) -> tuple[list[str], RowReport]:
    """Texts of a .jsonl / .json / .parquet / .txt file, or a `datasets` dataset saved to disk."""
    report = RowReport(path)
    if os.path.isdir(path):
        import datasets
        try:
            ds = datasets.load_from_disk(path)
        except Exception as e:
            raise DataError(f"{path}: not a `datasets` dataset saved with save_to_disk ({e})") from None
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"]
        field = _detect_field(ds[0], text_field, path) if len(ds) else text_field
        texts = [t for t in ds[field] if isinstance(t, str)]
    elif path.endswith(".parquet"):
        import pyarrow.parquet as pq
        try:
            table = pq.read_table(path)
        except Exception as e:
            raise DataError(f"{path}: unreadable parquet ({e})") from None
        rows = table.to_pylist()
        field = _detect_field(rows[0], text_field, path) if rows else text_field
        texts = []
        for i, r in enumerate(rows, 1):
            if isinstance(r.get(field), str):
                texts.append(r[field])
            else:
                report.add(i, f"field '{field}' missing or not a string")
    elif path.endswith((".jsonl", ".json")):
        texts, field = [], text_field
        for i, row in _jsonl_rows(path, report):
            try:
                field = field or _detect_field(row, None, f"{path}:{i}")
            except DataError as e:
                report.add(i, str(e).split(": ", 1)[1])
                continue
            if isinstance(row.get(field), str):
                texts.append(row[field])
            else:
                report.add(i, f"field '{field}' missing or not a string")
    else:
        texts = [read_file(path)]
    if not texts:
        raise DataError(f"{path}: no usable text rows" + (f" ({report.bad} malformed)" if report.bad else ""))
    return texts, report


def _jsonl_rows(path: str, report: RowReport):
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                report.add(i, f"invalid JSON ({e.msg})")
                continue
            if not isinstance(row, dict):
                report.add(i, "not a JSON object")
                continue
            yield i, row


# ----------------------------------------------------------------------------- conversations (SFT)
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def parse_conversation(row: dict) -> list[dict[str, str]]:
    """Both common formats -> OpenAI-style messages:
      {"conversations": [{"from": "human"|"gpt", "value": ...}], "system": ...}   (ShareGPT)
      {"messages": [{"role": ..., "content": ...}]}                                (OpenAI)
    Raises ValueError naming what is wrong; the last message must be the assistant's answer."""
    if "messages" in row:
        msgs = []
        for m in row["messages"]:
            if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"bad message {str(m)[:80]!r}")
            msgs.append({"role": _ROLES[m["role"]], "content": m["content"]})
    elif "conversations" in row:
        msgs = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) and row["system"] else []
        for m in row["conversations"]:
            if not isinstance(m, dict) or m.get("from") not in _ROLES or not isinstance(m.get("value"), str):
                raise ValueError(f"bad turn {str(m)[:80]!r}")
            msgs.append({"role": _ROLES[m["from"]], "content": m["value"]})
    else:
        raise ValueError("neither 'messages' nor 'conversations'")
    if not msgs or msgs[-1]["role"] != "assistant":
        raise ValueError("the last message is not the assistant's")
    if not any(m["role"] == "user" for m in msgs):
        raise ValueError("no user message")
    return msgs


def parse_sft_row(row: dict):
    """A conversation (see parse_conversation) as its messages, or a raw completion pair
    {"prompt": str, "answer": str} (no chat template: the answer continues the prompt's text) as
    {"prompt", "answer"}. Raises ValueError naming what is wrong."""
    if "prompt" in row or "answer" in row:
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("answer"), str):
            raise ValueError("fields 'prompt' and 'answer' must both be strings")
        if not row["answer"]:
            raise ValueError("field 'answer' is empty")
        return {"prompt": row["prompt"], "answer": row["answer"]}
    return parse_conversation(row)


def sft_examples(path: str) -> tuple[list, RowReport]:
    """The SFT file's rows: each a conversation (a list of messages) or a raw {"prompt", "answer"}."""
    report = RowReport(path)
    out = []
    for i, row in _jsonl_rows(path, report):
        try:
            out.append(parse_sft_row(row))
        except ValueError as e:
            report.add(i, str(e))
    if not out:
        raise DataError(f"{path}: no usable SFT rows" + (f" ({report.bad} malformed)" if report.bad else ""))
    return out, report


def conversations(path: str) -> tuple[list[list[dict[str, str]]], RowReport]:
    report = RowReport(path)
    out = []
    for i, row in _jsonl_rows(path, report):
        try:
            out.append(parse_conversation(row))
        except ValueError as e:
            report.add(i, str(e))
    if not out:
        raise DataError(f"{path}: no usable conversations" + (f" ({report.bad} malformed)" if report.bad else ""))
    return out, report
