"""Python backend: the candidate (runs the program) and the judge (runs the tests), two processes.

Why two processes. Whatever runs in the program's interpreter, the program can change: it can
replace `check`, patch builtins, jump over asserts with a trace function, find a nonce with `gc`
or `ctypes`, write a forged "passed" to any descriptor it holds, or leave through `os._exit`. So the
verdict is never computed where the program runs. The worker forks a *candidate* (untrusted,
private uid) that executes the program, and a *judge* (its own uid) that executes the tests. The
judge sees the program's top-level names as `Remote` proxies: calling one sends the arguments to
the candidate, which runs the function and sends back the value. Values cross as data (exact
builtin types rebuilt by the judge), so an object whose `__eq__` always returns True arrives as
whatever plain value it wraps or as an opaque handle that never equals plain data. The judge alone
holds the pipe on which the verdict goes to the worker, and the candidate is forked before the
worker even reads the tests, so it never has them in memory.

Exit tricks (exit(), sys.exit, os._exit, SystemExit/KeyboardInterrupt or any BaseException raised
to the harness) end a call with an error that no test can turn into a pass: the judge marks the job
failed as soon as it sees one, whatever the test code does with the exception.
"""

from __future__ import annotations

import base64
import builtins
import importlib
import os
import sys
import traceback
import types

from jaxdiff.verify import proto

_MAX_DEPTH = 200
_MAX_REPLY = 64 << 20


# ---------------------------------------------------------------------------------------------
# Value codec. Plain data travels as JSON; everything else as a handle the owner resolves.
# ---------------------------------------------------------------------------------------------

def encode(value, on_other, depth: int = 0):
    """Encode `value` as JSON-able data. Subclasses of builtin types are read through the base
    type's own methods (never the subclass's), so an int subclass with a lying `__eq__` travels
    as its plain int value. `on_other(value)` encodes anything else (a handle, or an error)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value
    if t is float:
        return value
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    d = depth + 1
    if isinstance(value, list):
        return [encode(x, on_other, d) for x in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"t": [encode(x, on_other, d) for x in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"d": [[encode(k, on_other, d), encode(v, on_other, d)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"f": [encode(x, on_other, d) for x in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"s": [encode(x, on_other, d) for x in set.__iter__(value)]}
    if isinstance(value, (bytes, bytearray)):
        return {"b": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, complex):
        return {"c": [complex.__complex__(value).real, complex.__complex__(value).imag]}
    if t.__module__ == "numpy" and t.__name__ != "ndarray" and hasattr(value, "item"):
        # numpy scalars (int64, float32, bool_): the Python number they stand for
        return encode(value.item(), on_other, d)
    return on_other(value)


def decode(obj, on_handle, depth: int = 0):
    """Rebuild a value from `encode`'s output using exact builtin types only."""
    if depth > _MAX_DEPTH + 2:
        raise proto.ProtocolError("value nested too deep")
    t = type(obj)
    if obj is None or t in (bool, int, float, str):
        return obj
    d = depth + 1
    if t is list:
        return [decode(x, on_handle, d) for x in obj]
    if t is dict and len(obj) == 1:
        ((tag, body),) = obj.items()
        if tag == "h" and type(body) is int:
            return on_handle(body)
        if tag == "b" and type(body) is str:
            return base64.b64decode(body, validate=True)
        if type(body) is not list:
            raise proto.ProtocolError(f"malformed value tag {tag!r}")
        if tag == "t":
            return tuple(decode(x, on_handle, d) for x in body)
        if tag == "s":
            return {decode(x, on_handle, d) for x in body}
        if tag == "f":
            return frozenset(decode(x, on_handle, d) for x in body)
        if tag == "d":
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise proto.ProtocolError("malformed dict item")
                out[decode(pair[0], on_handle, d)] = decode(pair[1], on_handle, d)
            return out
        if tag == "c" and len(body) == 2 and all(type(x) in (int, float) for x in body):
            return complex(body[0], body[1])
    raise proto.ProtocolError(f"not an encoded value: {str(obj)[:80]}")


def describe_exception(e: BaseException) -> list:
    """[type name, message, kind]; kind is 'exit' for anything that is not an Exception."""
    if isinstance(e, MemoryError):
        kind = "memory"
    elif isinstance(e, Exception):
        kind = "error"
    else:
        kind = "exit"
    try:
        msg = str(e)[:500]
    except BaseException:  # a user exception whose __str__ itself misbehaves
        msg = "<unprintable>"
    return [type(e).__name__, msg, kind]


# ---------------------------------------------------------------------------------------------
# Candidate side (untrusted process). Runs the program, then serves the judge's requests.
# ---------------------------------------------------------------------------------------------

def run_candidate(program: str, mode: str, req_fd: int, resp_fd: int) -> int:
    """Execute `program`; in 'tests' mode serve requests on req_fd/resp_fd until EOF.

    mode 'tests': the module is named 'solution' (an `if __name__ == "__main__"` block stays out of
    the tests' way). Modes 'stdout'/'program': runs as __main__ like `python prog.py`, then reports
    how it ended on resp_fd (nothing to forge there: the verdict is the output, checked outside).
    """
    module = types.ModuleType("solution" if mode == "tests" else "__main__")
    sys.modules[module.__name__] = module
    ns = module.__dict__
    ns["__builtins__"] = builtins
    handles: dict[int, object] = {}

    def to_handle(v):
        handles[id(v)] = v
        return {"h": id(v)}

    try:
        code = compile(program, "<program>", "exec")
        exec(code, ns)
        end = {"end": "returned"}
    except SystemExit as e:
        end = {"end": "exit", "code": e.code if isinstance(e.code, (int, type(None))) else str(e.code)[:200]}
    except BaseException as e:
        end = {"end": "exception", "exc": describe_exception(e), "tb": _short_tb(e, "<program>")}

    if mode != "tests":
        if "threading" in sys.modules and end["end"] == "returned":
            sys.modules["threading"]._shutdown()  # wait for non-daemon threads, as the interpreter would
        _flush()
        proto.write_json(resp_fd, end)
        return 0

    _flush()  # the process is killed, not exited, once the tests are done
    if end["end"] != "returned":
        proto.write_json(resp_fd, {"loaded": False, **end})
        return 0
    proto.write_json(resp_fd, {"loaded": True, "names": sorted(n for n in ns if not n.startswith("__"))})
    _serve(ns, handles, to_handle, req_fd, resp_fd)
    return 0


def _global(value, to_handle):
    if isinstance(value, types.ModuleType):
        return {"m": value.__name__}
    try:
        return encode(value, to_handle)
    except ValueError:
        return to_handle(value)


def _serve(ns, handles, to_handle, req_fd, resp_fd):
    def resolve(h):
        try:
            return handles[h]
        except KeyError:
            raise proto.ProtocolError(f"unknown handle {h}") from None

    ops = {
        "call": lambda o, r: o(*decode(r["a"], resolve), **{k: v for k, v in decode(r["k"], resolve).items()}),
        "getattr": lambda o, r: getattr(o, r["n"]),
        "iter": lambda o, r: iter(o),
        "next": lambda o, r: next(o),
        "len": lambda o, r: len(o),
        "bool": lambda o, r: bool(o),
        "repr": lambda o, r: repr(o),
        "str": lambda o, r: str(o),
        "hash": lambda o, r: hash(o),
        "getitem": lambda o, r: o[decode(r["k"], resolve)],
        "contains": lambda o, r: decode(r["k"], resolve) in o,
        "eq": lambda o, r: bool(o == resolve(r["o"])),
    }
    while True:
        req = proto.read_json(req_fd)
        if req is None:
            return
        try:
            if req["op"] == "globals":  # the program's top-level names the tests refer to
                reply = {"v": {n: _global(ns[n], to_handle) for n in req["names"] if n in ns}}
            else:
                reply = {"v": encode(ops[req["op"]](resolve(req["h"]), req), to_handle)}
        except StopIteration:
            reply = {"stop": True}
        except BaseException as e:
            reply = {"e": describe_exception(e), "tb": _short_tb(e, "<program>")}
        _flush()
        proto.write_json(resp_fd, reply)


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # closed or replaced by the program: its output, its loss
            pass


def _short_tb(e: BaseException, filename: str) -> str:
    """The program's own frames of a traceback, last three."""
    try:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == filename][-3:]
        return "; ".join(f"{filename} line {f.lineno} in {f.name}" for f in frames)
    except BaseException:
        return ""


# ---------------------------------------------------------------------------------------------
# Judge side (trusted code: our harness and the job's tests, in a process the program cannot reach).
# ---------------------------------------------------------------------------------------------

class RemoteError(Exception):
    """The program raised an exception that has no builtin counterpart."""


class ProgramExit(BaseException):
    """The program tried to leave (SystemExit, KeyboardInterrupt, os._exit, ...). Not an Exception,
    so `except Exception` in a test does not swallow it; the judge fails the job regardless."""


class ProgramMemoryError(MemoryError):
    pass


class _Link:
    def __init__(self, req_fd, resp_fd):
        self.req_fd, self.resp_fd = req_fd, resp_fd
        self.exit_seen: str | None = None
        self.memory_seen: str | None = None
        self.dead: str | None = None

    def request(self, op, h, **kw):
        if self.dead:
            raise ProgramExit(self.dead)
        try:
            proto.write_json(self.req_fd, {"op": op, "h": h, **{k: self.encode(v) for k, v in kw.items()}})
            reply = proto.read_json(self.resp_fd, _MAX_REPLY)
        except (OSError, EOFError, proto.ProtocolError) as e:
            reply = None
            self.dead = f"the program's process stopped answering ({type(e).__name__}: {e})"
        if reply is None:
            self.dead = self.dead or "the program's process exited during the tests"
            self.exit_seen = self.exit_seen or self.dead
            raise ProgramExit(self.dead)
        if type(reply) is not dict:
            raise proto.ProtocolError("malformed reply")
        if "v" in reply:
            return decode(reply["v"], self.handle)
        if reply.get("stop") is True:
            raise StopIteration
        if "e" in reply:
            name, msg, kind = (list(reply["e"]) + ["", "", "error"])[:3]
            where = f" [{reply.get('tb')}]" if reply.get("tb") else ""
            text = f"{name}: {msg}{where}"
            if kind == "exit":
                self.exit_seen = self.exit_seen or f"the program raised {text}"
                raise ProgramExit(self.exit_seen)
            if kind == "memory":
                self.memory_seen = self.memory_seen or text
                raise ProgramMemoryError(text)
            cls = getattr(builtins, str(name), None)
            exc = None
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    exc = cls(f"{msg}{where}")
                except TypeError:  # exception types whose constructor needs more arguments
                    pass
            raise exc if exc is not None else RemoteError(text)
        raise proto.ProtocolError("malformed reply")

    def fetch_globals(self, names: list) -> dict:
        """Raw encoded values of the program's top-level `names` (decoded by the caller)."""
        if self.dead:
            raise ProgramExit(self.dead)
        try:
            proto.write_json(self.req_fd, {"op": "globals", "names": names})
            reply = proto.read_json(self.resp_fd, _MAX_REPLY)
        except (OSError, EOFError, proto.ProtocolError) as e:
            reply = None
            self.dead = f"the program's process stopped answering ({type(e).__name__}: {e})"
        if reply is None:
            self.dead = self.dead or "the program's process exited before the tests"
            raise ProgramExit(self.dead)
        if type(reply) is not dict or type(reply.get("v")) is not dict:
            raise proto.ProtocolError("malformed reply to 'globals'")
        return reply["v"]

    def handle(self, h):
        return Remote(self, h)

    def encode(self, value):
        def other(v):
            if isinstance(v, Remote) and object.__getattribute__(v, "_link") is self:
                return {"h": object.__getattribute__(v, "_h")}
            raise TypeError(f"cannot pass a {type(v).__name__} to the program (plain data and program objects only)")
        return encode(value, other)


class Remote:
    """A program object seen from the judge. Operations run in the candidate; results come back as
    plain data. A Remote never equals plain data: `candidate(x) == 3` is True only for a real 3."""

    __slots__ = ("_link", "_h")

    def __init__(self, link, h):
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_h", h)

    def _r(self, op, **kw):
        return object.__getattribute__(self, "_link").request(op, object.__getattribute__(self, "_h"), **kw)

    def __call__(self, *args, **kwargs):
        return self._r("call", a=list(args), k=kwargs)

    def __getattr__(self, name):
        return self._r("getattr", n=name)

    def __iter__(self):
        return self._r("iter")

    def __next__(self):
        return self._r("next")

    def __len__(self):
        return self._r("len")

    def __bool__(self):
        return self._r("bool")

    def __getitem__(self, key):
        return self._r("getitem", k=key)

    def __contains__(self, item):
        return self._r("contains", k=item)

    def __repr__(self):
        return self._r("repr")

    def __str__(self):
        return self._r("str")

    def __hash__(self):
        return self._r("hash")

    def __eq__(self, other):
        if isinstance(other, Remote):
            return self._r("eq", o=other)
        return False

    def __ne__(self, other):
        return not self.__eq__(other)


def judge_loop(sock_fd: int) -> int:
    """The judge process: one job after another, as the worker hands them over on `sock_fd`.

    Per job: one byte carrying the candidate's two pipe ends (SCM_RIGHTS), then the secret frame
    (tests, entry_point). Replies with the verdict frame. Ends when the worker hangs up.
    """
    import socket

    sock = socket.socket(fileno=sock_fd)
    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 1, 2)
        if not msg:
            return 0
        if len(fds) != 2:
            raise proto.ProtocolError(f"expected 2 descriptors, got {len(fds)}")
        secret = proto.read_json(sock_fd)
        try:
            verdict = _judge(secret, _Link(fds[0], fds[1]))
        finally:
            for fd in fds:
                os.close(fd)
        proto.write_json(sock_fd, verdict)


def _judge(secret, link) -> dict:
    try:
        loaded = proto.read_json(link.resp_fd, _MAX_REPLY)
    except (OSError, EOFError, proto.ProtocolError) as e:
        loaded = None
        link.dead = str(e)
    if type(loaded) is not dict:
        return {"status": "failed", "detail": "the program's process exited while loading (no report)"}
    if loaded.get("loaded") is not True:
        end = loaded.get("end")
        if end == "exit":
            return {"status": "failed", "detail": f"the program called exit({loaded.get('code')!r}) while loading"}
        exc = list(loaded.get("exc") or ["?", "", "error"]) + ["", "", ""]
        status = "memory" if exc[2] == "memory" else ("failed" if exc[2] == "exit" else "error")
        tb = f" [{loaded.get('tb')}]" if loaded.get("tb") else ""
        return {"status": status, "detail": f"loading the program raised {exc[0]}: {exc[1]}{tb}"}

    tests = secret.get("tests")
    entry = secret.get("entry_point")
    snippets = tests if isinstance(tests, list) else [tests]
    labels = [f"<tests[{i}]>" if isinstance(tests, list) else "<tests>" for i in range(len(snippets))]
    codes, wanted = [], {entry} if entry else set()
    for snippet, label in zip(snippets, labels):
        try:
            code = compile(snippet, label, "exec")
            wanted |= _names(code)
        except SyntaxError as e:
            code = e
        codes.append(code)

    ns = {"__name__": "__test__", "__builtins__": builtins}
    try:
        offered = set(loaded["names"])
        fetched = link.fetch_globals(sorted(wanted & offered)) if wanted & offered else {}
        for name, enc in fetched.items():
            if type(enc) is dict and set(enc) == {"m"}:
                try:
                    ns[name] = importlib.import_module(str(enc["m"]))
                except Exception:
                    continue  # a module the program built itself; tests cannot rely on it
            else:
                ns[name] = decode(enc, link.handle)
    except ProgramExit as e:
        return {"status": "failed", "detail": str(e)}
    except (proto.ProtocolError, KeyError, TypeError, ValueError, AttributeError) as e:
        return {"status": "error", "detail": f"malformed report from the program's process: {e}"}
    program_names = dict(ns)

    passed, failures = 0, []
    for code, label in zip(codes, labels):
        env = dict(program_names)
        try:
            if isinstance(code, SyntaxError):
                raise code
            exec(code, env)
            if entry is not None:
                if entry not in program_names:
                    raise NameError(f"the program does not define {entry!r}")
                env["check"](program_names[entry])
            if link.exit_seen or link.memory_seen:
                break
            passed += 1
        except BaseException as e:
            failures.append(_test_failure(e, label))
            if link.dead:
                break
    total = len(snippets)
    stats = {"tests_passed": passed, "tests_total": total}
    if link.exit_seen:
        return {"status": "failed", "detail": link.exit_seen, **stats}
    if link.memory_seen:
        return {"status": "memory", "detail": link.memory_seen, **stats}
    if passed == total:
        return {"status": "passed", "detail": "", **stats}
    return {"status": "failed", "detail": f"{total - passed} of {total} test(s) failed; first: {failures[0]}", **stats}


def _names(code) -> set:
    """Every global name a compiled test (and the functions it defines) may look up."""
    out = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _names(const)
    return out


def _test_failure(e: BaseException, label: str) -> str:
    line = ""
    for f in traceback.extract_tb(e.__traceback__):
        if f.filename == label:
            line = f" at {label} line {f.lineno}"
    try:
        msg = str(e)[:300]
    except BaseException:
        msg = ""
    return f"{type(e).__name__}{': ' + msg if msg else ''}{line}"
