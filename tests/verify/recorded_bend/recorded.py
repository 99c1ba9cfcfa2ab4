"""Programs and bend 0.2.38's recorded answers to them (format per docs/verify.md, "Bend output")."""

import re

RED, BOLD, RESET = "\x1b[31m", "\x1b[1m", "\x1b[0m"

ANSWER = "def main():\n  return 42"
SUM = ("def sum(n):\n  if n == 0:\n    return 0\n  else:\n    return n + sum(n - 1)\n\n"
       "def main():\n  return sum(1023)")
WRAP = ("def sum(n):\n  if n == 0:\n    return 0\n  else:\n    return n + sum(n - 1)\n\n"
        "def main():\n  return sum(65535)")
STRING = 'def main():\n  return "hello"'
SYNTAX = "def main()\n  return 1"
UNBOUND = "def main():\n  return x"
NO_MAIN = "def foo():\n  return 1"
DIV_ZERO = "def main():\n  return 1 / 0"
LOOP = "def loop(x):\n  return loop(x)\n\ndef main():\n  return loop(0)"
# what `hvm run-c` prints for STRING's net (hvm prints raw nets; bend reads them back as terms)
RAW_HELLO = ("((@String/Cons/tag (104 (((@String/Cons/tag (101 (((@String/Cons/tag (108 (((@String/Cons/tag (108 "
             "(((@String/Cons/tag (111 (@String/Nil x10000008))) x10000008) x1000000b))) x1000000b) x1000000e))) "
             "x1000000e) x10000011))) x10000011) x10000014))) x10000014)")

RECORDINGS = {
    ANSWER: {"result": "42", "stats": "- ITRS: 2\n- TIME: 0.00s\n- MIPS: 0.00\n", "cu_invalid": True},
    SUM: {"result": "523776", "stats": "- ITRS: 79828\n- TIME: 0.01s\n- MIPS: 13.55\n"},
    WRAP: {"result": "16744448"},
    STRING: {"result": '"hello"', "raw": RAW_HELLO, "stats": "- ITRS: 17\n- TIME: 0.01s\n- MIPS: 0.00\n"},
    SYNTAX: {"exit": 1, "stderr": f"{BOLD}{RED}Errors:{RESET}\n{BOLD}In main.bend :{RESET}\n"
                                  f"{RED}- expected:{RESET} ':'\n{RED}- detected:{RESET}\n 1 | def main()\n"},
    UNBOUND: {"exit": 1, "stderr": f"{BOLD}{RED}Errors:{RESET}\n{BOLD}In definition '{RESET}main{BOLD}':{RESET}\n"
                                   f"  Unbound variable 'x'.\n"},
    NO_MAIN: {"exit": 1, "stderr": f"{BOLD}{RED}Errors:{RESET}\nFile has no 'main' definition.\n"},
    DIV_ZERO: {"exit": 1, "stderr": f"{BOLD}{RED}Errors:{RESET}\nHVM output had no result (An error likely occurred)\n"},
    LOOP: {"hang": True},
}
# The stand-ins name a program by its index here (@recorded/<n> in the nets they pass around).
PROGRAMS = list(RECORDINGS.values())
_SOURCES = list(RECORDINGS)


def program_key(source: str):
    """Index of a recorded program in `source` (a job's main.bend: the program, then the pool's seal
    helper, which starts at `def JaxdiffSeal/`), or None."""
    program = source.split("\ndef JaxdiffSeal/")[0].strip()
    return _SOURCES.index(program) if program in _SOURCES else None


def raw(rec: dict) -> str:
    """The recorded result as hvm prints it (a raw net)."""
    return rec.get("raw", rec.get("result"))


def readback(net: str, rec: dict) -> str:
    """bend's readback, for what these nets can hold: a sealed root `(a (b (c X)))` is a tuple, and
    the recorded raw result reads back as the recorded result."""
    term = lambda x: rec["result"] if x == raw(rec) else x  # noqa: E731
    m = re.fullmatch(r"\((\S+) \((\S+) \((\S+) (.*)\)\)\)", net.strip())
    return f"({m[1]}, ({m[2]}, ({m[3]}, {term(m[4])})))" if m else term(net.strip())
