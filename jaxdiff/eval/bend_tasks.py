"""HumanEval problems translated by hand into Bend, where the translation is mechanical.

    bend_humaneval()      13 tasks: HumanEval/13, 24, 35, 42, 46, 49, 52, 53, 55, 59, 60, 63, 150

Each is the problem's function on unsigned integers or lists of them: the prompt is the docstring
as `#` comments and the `def` line, the reference a Bend body (helpers defined after it, as a
completion may), and the hidden test a `main` that applies the function to HumanEval's own test
inputs and returns the list of results. The expected results are not typed in: they come from
running HumanEval's canonical Python solution on the same inputs (True/False as 1/0, which is
what Bend's comparisons return), so a passing Bend reference agrees with HumanEval's.

Adapted (Bend numbers are u24, negative inputs do not carry over): HumanEval/35 drops the signs of
its test list; HumanEval/150 leaves out its one test with y = -1. Everything else uses HumanEval's
test inputs as they are (those that fit u24). See the synthetic family (`synthetic(...,
language="bend")`) for Bend tasks with mutants.
"""

from __future__ import annotations

import functools

from jaxdiff.eval.humaneval import humaneval
from jaxdiff.eval.tasks import Task

# (HumanEval id, Bend prompt, Bend reference, argument lists of the hidden test)
_SPECS = (
    ("HumanEval/13", "# Return the greatest common divisor of two integers a and b.\n"
     "# greatest_common_divisor(3, 5) == 1\n# greatest_common_divisor(25, 15) == 5\n"
     "def greatest_common_divisor(a, b):\n",
     "  if b == 0:\n    return a\n  else:\n    return greatest_common_divisor(b, a % b)\n",
     [(3, 7), (10, 15), (49, 14), (144, 60)]),
    ("HumanEval/24", "# For a given number n, find the largest number that divides n evenly, smaller than n.\n"
     "# largest_divisor(15) == 5\ndef largest_divisor(n):\n",
     "  return divisor_below(n, n - 1)\n\ndef divisor_below(n, d):\n  if n % d == 0:\n    return d\n"
     "  else:\n    return divisor_below(n, d - 1)\n",
     [(3,), (7,), (10,), (100,), (49,)]),
    ("HumanEval/35", "# Return maximum element in the list.\n# max_element([1, 2, 3]) == 3\n"
     "# max_element([5, 3, 5, 2, 3, 3, 9, 0, 123, 1, 10]) == 123\ndef max_element(l):\n",
     "  fold l:\n    case List/Cons:\n      if l.head > l.tail:\n        return l.head\n      else:\n"
     "        return l.tail\n    case List/Nil:\n      return 0\n",
     [([1, 2, 3],), ([5, 3, 5, 2, 3, 3, 9, 0, 123, 1, 10],)]),
    ("HumanEval/42", "# Return list with elements incremented by 1.\n# incr_list([1, 2, 3]) == [2, 3, 4]\n"
     "def incr_list(l):\n",
     "  fold l:\n    case List/Cons:\n      return List/Cons(l.head + 1, l.tail)\n    case List/Nil:\n"
     "      return List/Nil\n",
     [([],), ([3, 2, 1],), ([5, 2, 5, 2, 3, 3, 9, 0, 123],)]),
    ("HumanEval/46", "# The Fib4 number sequence: fib4(0) == 0, fib4(1) == 0, fib4(2) == 2, fib4(3) == 0,\n"
     "# fib4(n) == fib4(n-1) + fib4(n-2) + fib4(n-3) + fib4(n-4). Compute the n-th element.\n"
     "# fib4(5) == 4\n# fib4(6) == 8\ndef fib4(n):\n",
     "  return fib4_from(n, 0, 0, 2, 0)\n\ndef fib4_from(n, a, b, c, d):\n  if n == 0:\n    return a\n"
     "  else:\n    return fib4_from(n - 1, b, c, d, a + b + c + d)\n",
     [(5,), (8,), (10,), (12,)]),
    ("HumanEval/49", "# Return 2^n modulo p.\n# modp(3, 5) == 3\n# modp(0, 101) == 1\ndef modp(n, p):\n",
     "  if n == 0:\n    return 1 % p\n  else:\n    return (2 * modp(n - 1, p)) % p\n",
     [(3, 5), (1101, 101), (0, 101), (3, 11), (100, 101), (30, 5), (31, 5)]),
    ("HumanEval/52", "# Return 1 if all numbers in the list l are below threshold t, else 0.\n"
     "# below_threshold([1, 2, 4, 10], 100) == 1\n# below_threshold([1, 20, 4, 10], 5) == 0\n"
     "def below_threshold(l, t):\n",
     "  match l:\n    case List/Cons:\n      if l.head < t:\n        return below_threshold(l.tail, t)\n"
     "      else:\n        return 0\n    case List/Nil:\n      return 1\n",
     [([1, 2, 4, 10], 100), ([1, 20, 4, 10], 5), ([1, 20, 4, 10], 21), ([1, 20, 4, 10], 22),
      ([1, 8, 4, 10], 11), ([1, 8, 4, 10], 10)]),
    ("HumanEval/53", "# Add two numbers x and y\n# add(2, 3) == 5\n# add(5, 7) == 12\ndef add(x, y):\n",
     "  return x + y\n",
     [(0, 1), (1, 0), (2, 3), (5, 7), (7, 5)]),
    ("HumanEval/55", "# Return n-th Fibonacci number.\n# fib(10) == 55\n# fib(1) == 1\ndef fib(n):\n",
     "  if n < 2:\n    return n\n  else:\n    return fib(n - 1) + fib(n - 2)\n",
     [(10,), (1,), (8,), (11,), (12,)]),
    ("HumanEval/59", "# Return the largest prime factor of n. Assume n > 1 and is not a prime.\n"
     "# largest_prime_factor(13195) == 29\n# largest_prime_factor(2048) == 2\ndef largest_prime_factor(n):\n",
     "  return strip_factors(n, 2)\n\ndef strip_factors(n, d):\n  if n == 1:\n    return d\n"
     "  elif n % d == 0:\n    if n / d == 1:\n      return d\n    else:\n      return strip_factors(n / d, d)\n"
     "  else:\n    return strip_factors(n, d + 1)\n",
     [(15,), (27,), (63,), (330,), (13195,)]),
    ("HumanEval/60", "# sum_to_n is a function that sums numbers from 1 to n.\n# sum_to_n(30) == 465\n"
     "# sum_to_n(5) == 15\ndef sum_to_n(n):\n",
     "  if n == 0:\n    return 0\n  else:\n    return n + sum_to_n(n - 1)\n",
     [(1,), (6,), (11,), (30,), (100,)]),
    ("HumanEval/63", "# The FibFib number sequence: fibfib(0) == 0, fibfib(1) == 0, fibfib(2) == 1,\n"
     "# fibfib(n) == fibfib(n-1) + fibfib(n-2) + fibfib(n-3). Compute the n-th element.\n"
     "# fibfib(5) == 4\n# fibfib(8) == 24\ndef fibfib(n):\n",
     "  return fibfib_from(n, 0, 0, 1)\n\ndef fibfib_from(n, a, b, c):\n  if n == 0:\n    return a\n"
     "  else:\n    return fibfib_from(n - 1, b, c, a + b + c)\n",
     [(2,), (1,), (5,), (8,), (10,), (12,), (14,)]),
    ("HumanEval/150", "# Return the value of x if n is a prime number and the value of y otherwise.\n"
     "# x_or_y(7, 34, 12) == 34\n# x_or_y(15, 8, 5) == 5\ndef x_or_y(n, x, y):\n",
     "  if n < 2:\n    return y\n  elif has_divisor(n, 2):\n    return y\n  else:\n    return x\n\n"
     "def has_divisor(n, d):\n  if d * d > n:\n    return 0\n  elif n % d == 0:\n    return 1\n"
     "  else:\n    return has_divisor(n, d + 1)\n",
     [(7, 34, 12), (15, 8, 5), (3, 33, 5212), (1259, 3, 52), (3609, 1245, 583), (91, 56, 129),
      (6, 34, 1234), (1, 2, 0), (2, 2, 0)]),
)


def bend_humaneval() -> list[Task]:
    return list(_build())


@functools.lru_cache(maxsize=1)
def _build() -> tuple[Task, ...]:
    problems = {p.id: p for p in humaneval()}
    out = []
    for he_id, prompt, reference, cases in _SPECS:
        p = problems[he_id]
        ns: dict = {}
        exec(p.prompt + p.reference, ns)  # HumanEval's canonical solution (trusted, from the package)
        f = ns[p.entry_point]
        values = [f(*[list(a) if isinstance(a, list) else a for a in args]) for args in cases]
        main = "def main():\n  return [" + ", ".join(f"{p.entry_point}({', '.join(map(repr, a))})"
                                                      for a in cases) + "]\n"
        expected = "[" + ", ".join(_bend_value(v) for v in values) + "]"
        out.append(Task(id=f"bend/{he_id}", prompt=prompt, language="bend", entry_point=p.entry_point, tests=main,
                        expected_result=expected, reference=reference, suite="bend-humaneval", family=he_id,
                        meta={"cases": len(cases)}))
    return tuple(out)


def _bend_value(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, list):
        return "[" + ", ".join(_bend_value(x) for x in v) + "]"
    if isinstance(v, int) and 0 <= v < 1 << 24:
        return str(v)
    raise ValueError(f"{v!r} has no u24 Bend value")
