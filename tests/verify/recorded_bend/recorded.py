"""Programs and bend 0.2.38's recorded answers to them (format per docs/verify.md, "Bend output")."""

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

PROGRAMS = {
    ANSWER: {"result": "42", "stats": "- ITRS: 2\n- TIME: 0.00s\n- MIPS: 0.00\n", "cu_invalid": True},
    SUM: {"result": "523776", "stats": "- ITRS: 79828\n- TIME: 0.01s\n- MIPS: 13.55\n"},
    WRAP: {"result": "16744448"},
    STRING: {"result": '"hello"'},
    SYNTAX: {"exit": 1, "stderr": f"{BOLD}{RED}Errors:{RESET}\n{BOLD}In main.bend :{RESET}\n"
                                  f"{RED}- expected:{RESET} ':'\n{RED}- detected:{RESET}\n 1 | def main()\n"},
    UNBOUND: {"exit": 1, "stderr": f"{BOLD}{RED}Errors:{RESET}\n{BOLD}In definition '{RESET}main{BOLD}':{RESET}\n"
                                   f"  Unbound variable 'x'.\n"},
    NO_MAIN: {"exit": 1, "stderr": f"{BOLD}{RED}Errors:{RESET}\nFile has no 'main' definition.\n"},
    DIV_ZERO: {"exit": 1, "stderr": f"{BOLD}{RED}Errors:{RESET}\nHVM output had no result (An error likely occurred)\n"},
    LOOP: {"hang": True},
}
