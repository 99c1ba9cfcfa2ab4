"""Bend/HVM backend: the command line for each runtime, the output parser, and the verdict.

Facts this relies on (bend-lang 0.2.38 / hvm 2.0.22, checked against the real binaries; docs/verify.md):
  * success: stdout holds what the program printed through IO, then `Result: <value>`; with `-s`
    the lines `- ITRS: n`, `- TIME: x.xxs`, `- MIPS: x.xx` follow. `hvm run*` always prints them.
    bend takes the *first* `Result: ` in hvm's output as the result, so a program could print its
    own: jobs run sealed (bendseal.py), and only a result paired with the job's nonce counts.
  * failure: diagnostics on stderr, coloured with ANSI codes even off a terminal; stdout empty;
    exit 1 (errors), 2 (bad flag) or 101 (hvm panic).
  * `run-cu` exits 0 with `Result: <Invalid>` when GPU memory runs out, and `bend` ignores the
    exit status of the `hvm` it runs: neither the exit code nor a `Result:` line alone is trusted.
  * `bend run-*` writes `.out.hvm` into the current directory: each job gets its own scratch dir.
  * Without a result, `bend run-c` exits 1 ("HVM output had no result"); that is also what a
    job's CPU-time limit looks like (the hvm child dies of SIGXCPU): the worker classifies by
    resource use, not by this message.
"""

from __future__ import annotations

import dataclasses
import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
_STAT = re.compile(r"^- (ITRS|TIME|MIPS): *([0-9.eE+-]+)s?\s*$")
_ERROR_MARKERS = ("Errors:", "error:", "panicked at", "HVM output had no result", "PARSE_ERROR",
                  "was not found", "has no 'main' definition", "Unbound variable")
INSTALL_HINT = "cargo install hvm@2.0.22 bend-lang@0.2.38"
# Address space hvm 2.0.22 reserves up front (measured: `hvm run-c` needs 7.5 GB of RLIMIT_AS to start).
HVM_ADDRESS_SPACE_MB = 8192


def command(runtime: str, bend: str | None, hvm_shim: str) -> list:
    """argv for a job's runtime, run in a scratch dir holding main.bend (the program + SEAL_SOURCE).

    `bend run-X -s -A unused-definition --hvm-bin <shim> main.bend` (the shim seals hvm's run), or
    for `hvm-run*`: ["gen-hvm", <bend gen-hvm argv>, <hvm subcommand>] (the job process seals and
    runs the generated net itself).
    """
    if bend is None:
        raise FileNotFoundError(f"bend is not installed ({INSTALL_HINT})")
    if runtime in ("run-rs", "run-c", "run-cu"):  # options before the file: what follows it goes to main
        return [bend, runtime, "-s", "-A", "unused-definition", "--hvm-bin", hvm_shim, "main.bend"]
    if runtime in ("hvm-run", "hvm-run-c", "hvm-run-cu"):
        return ["gen-hvm", [bend, "gen-hvm", "-A", "unused-definition", "main.bend"], runtime[len("hvm-"):]]
    raise ValueError(f"unknown Bend runtime {runtime!r}")


@dataclasses.dataclass(frozen=True)
class BendRun:
    """What one run said. `result` is the text after `Result:` (None if there was none)."""

    result: str | None
    printed: str
    stats: dict
    errors: str
    exit_code: int


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def parse_output(stdout: str, stderr: str, exit_code: int, nonce, printed: str = "") -> BendRun:
    """What a sealed run said. Only a `Result:` line sealed with `nonce` counts: read back by bend,
    `Result: (n1, (n2, (n3, <value>)))`; raw from hvm, `Result: (n1 (n2 (n3 <value>)))`. The
    statistics are the lines right after it; `printed` is what the program printed (bendseal.py)."""
    n1, n2, n3 = nonce
    forms = (f"Result: ({n1}, ({n2}, ({n3}, ", f"Result: ({n1} ({n2} ({n3} ")
    lines = strip_ansi(stdout).replace("\r\n", "\n").split("\n")
    result, stats = None, {}
    for i, line in enumerate(lines):
        form = next((f for f in forms if line.startswith(f)), None)
        if form is None:
            continue
        line = line.rstrip()
        if line.endswith(")))"):
            result = line[len(form):-3]
        for following in lines[i + 1:i + 4]:
            m = _STAT.match(following)
            if m is None:
                break
            key, num = m.group(1), m.group(2)
            try:
                stats[{"ITRS": "itrs", "TIME": "time_s", "MIPS": "mips"}[key]] = int(num) if key == "ITRS" else float(num)
            except ValueError:
                pass
        break
    return BendRun(result=result, printed=printed, stats=stats, errors=strip_ansi(stderr).strip(), exit_code=exit_code)


def verdict(run: BendRun, expected_result: str | None, expected_stdout: str | None) -> tuple[str, str]:
    """(status, detail). Passing needs exit 0, no diagnostics, a valid result, and every expectation met."""
    if run.exit_code != 0 or run.result is None or any(m in run.errors for m in _ERROR_MARKERS):
        why = run.errors.splitlines()
        first = "; ".join(line.strip() for line in why if line.strip())[:600] or "no diagnostics"
        if run.exit_code < 0:
            return "error", f"bend was killed by signal {-run.exit_code}: {first}"
        if run.exit_code == 0 and run.result is None:
            return "error", ("no Result line sealed with this job's nonce (a Result line the program prints "
                             f"is never its result): {first}")
        return "error", f"bend failed (exit {run.exit_code}{', no Result line' if run.result is None else ''}): {first}"
    if run.result == "<Invalid>":
        return "error", "the runtime returned <Invalid> (with run-cu: GPU memory ran out)"
    if expected_result is not None and run.result.strip() != expected_result.strip():
        return "failed", f"wrong result: expected {expected_result.strip()!r}, got {run.result!r}"
    if expected_stdout is not None and _norm(run.printed) != _norm(expected_stdout):
        return "failed", f"wrong output: expected {expected_stdout[:200]!r}, got {run.printed[:200]!r}"
    return "passed", ""


def _norm(s: str) -> str:
    return "\n".join(line.rstrip() for line in s.strip().splitlines())
