"""Sealed Bend results: a program's own output can never pass for its result.

`bend run-c` reports the first `Result:` line in what hvm prints, and a program prints through IO
onto the same stream before hvm prints its result: a program that prints `Result: 42` itself used
to pass as 42. So the pool never trusts a `Result:` line as such. Per job the worker draws a nonce
(three random u24, 72 bits) that the program cannot learn, and only a result paired with it counts:

1. The job's main.bend is the program plus `SEAL_SOURCE` (one helper, no nonce), compiled by bend
   as usual. bend runs this file as its `--hvm-bin`: it gets `run-c .out.hvm`, reads the nonce from
   CONTROL_FD (a pipe the worker filled and closed: read once, then empty), makes itself
   non-dumpable (its memory and descriptors are then out of the job uid's reach under /proc), and
   rewrites the net so that the root of `@main` becomes `(n1 (n2 (n3 <root>)))`.
2. It runs the real hvm on that net, passed through a pipe (no file holds the nonce), and splits
   hvm's output: the line that starts `Result: (n1 (n2 (n3 ` and the statistics lines after it
   go to bend, which reads the term back as `Result: (n1, (n2, (n3, <value>)))`; everything else
   the program printed goes to PRINTED_FD, so bend never sees a `Result:` line of the program's.
3. IO: hvm performs IO only while the *root* is an IO call, which the pair is not. When the sealed
   value of a first run is an IO call (`((@IO/Call/tag ...`, or hvm crashed printing it) and the
   runtime performs IO (hvm `run-c`, `run-cu`), it runs again with `@main` =
   `JaxdiffSeal/io(n1, n2, n3, <root>)`, which performs main's IO and pairs what it returns, as
   `IO/Done`, exactly as bend would print it.
4. The file must compile as written, to its end. A program that ends in an unclosed `#{` comment
   swallows whatever follows it -- in a task's job, the hidden `main` that tests it -- and runs a
   `main` of its own (bend accepts a comment left open at the end of the file). So the job process
   writes `end_source(mark)` last, a definition named with a fresh random `mark` per job that the
   program cannot have known, and the seal refuses to run a net without it (`has_end`): no
   sealed result, the job is an `error`. A string left open is closed only by a later `"`, which
   neither SEAL_SOURCE nor the mark holds: it reaches the end of the file, and bend refuses it.

The worker (bend.parse_output) accepts only a result in that sealed form and takes the statistics
that follow it. For `hvm-run*` jobs the worker's job process does steps 1-4 itself on the output of
`bend gen-hvm`. Standard library only: this file also runs as that script (see `main`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys

CONTROL_FD = 3  # from the worker: {"nonce": [n1, n2, n3], "hvm": "/path/to/hvm", "end": "<end mark>"}
PRINTED_FD = 4  # what the program printed, back to the worker
IO_COMMANDS = ("run-c", "run-cu")  # hvm subcommands that perform IO (`hvm run`, in Rust, does not)
# Appended to every Bend job's program. Bend forbids referring to `main`, so the helper takes
# main's value as an argument; the net rewrite applies it. Unused otherwise (-A unused-definition).
SEAL_SOURCE = """

def JaxdiffSeal/io(n1, n2, n3, m):
  with IO:
    r <- m
    return (n1, (n2, (n3, IO/wrap(r))))
"""
END_PREFIX = "JaxdiffEnd/m"  # + 16 hex digits, drawn per job (new_end_mark)
_STAT = re.compile(rb"^- (ITRS|TIME|MIPS): ")
_PR_SET_DUMPABLE = 4


def new_end_mark() -> str:
    """A fresh name for the definition that must close the file (step 4 of the module docstring)."""
    return END_PREFIX + os.urandom(8).hex()


def end_source(mark: str) -> str:
    """The definition written after everything else in main.bend."""
    return f"\n\ndef {mark}():\n  return 0\n"


def has_end(net: str, mark: str) -> bool:
    """Whether the generated net holds the end mark's definition, i.e. bend compiled main.bend to its end."""
    if not re.fullmatch(re.escape(END_PREFIX) + "[0-9a-f]{16}", mark):
        raise ValueError(f"not an end mark: {mark!r}")
    return re.search(rf"^@{re.escape(mark)} = ", net, re.M) is not None


END_MISSING = ("jaxdiff bend seal: the program swallowed the code after it (the file's last definition is "
               "not in the compiled net: an unclosed #{ comment?); nothing was run\n")


def seal_net(net: str, nonce, mode: str) -> str:
    """The generated net with `@main`'s root paired with the nonce ("pure"), or handed with it to
    `JaxdiffSeal/io` ("io")."""
    m = re.search(r"^@main = ", net, re.M)
    if m is None:
        raise ValueError("the generated net has no @main definition")
    start = m.end()
    end = _tree_end(net, start)
    root = net[start:end]
    n1, n2, n3 = (int(n) for n in nonce)
    if mode == "pure":
        return f"{net[:start]}({n1} ({n2} ({n3} {root}))){net[end:]}"
    var = "jaxdiff_seal_r"
    return f"{net[:start]}{var}\n  & @JaxdiffSeal/io ~ ({n1} ({n2} ({n3} ({root} {var})))){net[end:]}"


def _tree_end(text: str, i: int) -> int:
    """End of the HVM tree starting at text[i]: a balanced (...) / {...} (with `$`/`?` prefixes),
    else one token (a variable, `*`, `@ref`, a number)."""
    j = i
    if text[j:j + 1] in ("$", "?"):
        j += 1
    if text[j:j + 1] in ("(", "{"):
        depth = 0
        while j < len(text):
            c = text[j]
            if c in "({":
                depth += 1
            elif c in ")}":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        raise ValueError("unbalanced tree in @main")
    while j < len(text) and not text[j].isspace():
        j += 1
    return j


def raw_prefix(nonce) -> bytes:
    """How hvm prints the start of a sealed root."""
    n1, n2, n3 = (int(n) for n in nonce)
    return f"Result: ({n1} ({n2} ({n3} ".encode()


def run_sealed(hvm: str, cmd: str, net: str, nonce, printed_fd: int = PRINTED_FD, out_fd: int = 1) -> int:
    """Run hvm `cmd` on `net` sealed with `nonce`: the sealed result and its statistics to `out_fd`,
    everything else hvm's stdout carried to `printed_fd`. Returns hvm's exit status (128 + signal)."""
    prefix = raw_prefix(nonce)
    code, block = _run_hvm(hvm, cmd, seal_net(net, nonce, "pure"), prefix, printed_fd)
    if cmd in IO_COMMANDS and _is_io_call(code, block, prefix):
        code, block = _run_hvm(hvm, cmd, seal_net(net, nonce, "io"), prefix, printed_fd)
    if code > 128:
        os.write(2, f"hvm was killed by signal {code - 128}\n".encode())
    if block is not None:
        _write_all(out_fd, block)
    return code


def _is_io_call(code: int, block, prefix: bytes) -> bool:
    """Whether main's value, sealed, is an IO call: it reads so, or hvm crashed printing it before
    any of it got out (hvm's printer overflows its fixed stack on deep terms, and a pending IO call
    carries the whole rest of the program)."""
    if block is None:
        return code == 128 + signal.SIGSEGV
    return block[len(prefix):].startswith(b"((@IO/Call/tag ")


def _run_hvm(hvm, cmd, net, prefix, printed_fd):
    """(exit status, the sealed result line and its statistics lines, or None)."""
    net_r, net_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(out_w, 1)
            if net_r != 3:
                os.dup2(net_r, 3)
            os.set_inheritable(3, True)  # (dup2 onto itself would leave close-on-exec set)
            os.closerange(4, 1 << 16)
            os.execv(hvm, [hvm, cmd, "/proc/self/fd/3"])
        finally:
            os.write(2, f"jaxdiff bend seal: cannot run {hvm}\n".encode())
            os._exit(127)
    os.close(net_r)
    os.close(out_w)
    try:
        _write_all(net_w, net.encode())  # hvm reads the whole net before it prints anything
    except BrokenPipeError:
        pass
    os.close(net_w)
    block, pending = None, b""
    keep = len(prefix) - 1
    while True:
        data = os.read(out_r, 1 << 16)
        if not data:
            break
        if block is not None:
            block += data
            continue
        pending += data
        at = pending.find(prefix)
        if at >= 0:
            _write_all(printed_fd, pending[:at])
            block, pending = pending[at:], b""
        elif len(pending) > keep:  # the prefix may still be starting in the last few bytes
            _write_all(printed_fd, pending[:-keep])
            pending = pending[-keep:]
    os.close(out_r)
    _write_all(printed_fd, pending)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code
    if block is None:
        return code, None
    lines = block.split(b"\n")
    n = 1
    while n < len(lines) and n <= 3 and _STAT.match(lines[n]):
        n += 1
    _write_all(printed_fd, b"\n".join(lines[n:]))  # anything after the statistics is the program's too
    return code, b"\n".join(lines[:n]) + b"\n"


def _write_all(fd: int, data: bytes):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _non_dumpable():
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")


def read_control(fd: int = CONTROL_FD) -> dict:
    """The worker's message (read to its end, then the descriptor is closed)."""
    chunks = []
    while data := os.read(fd, 1 << 16):
        chunks.append(data)
    os.close(fd)
    return json.loads(b"".join(chunks))


def main(argv=None) -> int:
    """As bend's `--hvm-bin`: `<this> run|run-c|run-cu .out.hvm`."""
    argv = sys.argv[1:] if argv is None else argv
    _non_dumpable()  # before the nonce enters this process
    ctrl = read_control()
    cmd, path = argv[-2], argv[-1]
    with open(path) as f:
        net = f.read()
    if not has_end(net, ctrl["end"]):
        os.write(2, END_MISSING.encode())
        return 1
    return run_sealed(ctrl["hvm"], cmd, net, ctrl["nonce"])


if __name__ == "__main__":
    sys.exit(main())
