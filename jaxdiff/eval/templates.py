"""The templates of the synthetic family (`synthetic.py` turns them into tasks).

A template is one kind of small function with constants left open: `add_{a}` is "Return x plus
{a}." with body `return x + {a}`, for a = 1..150. Each carries its reference body, candidate mutants
(plausible wrong bodies: off-by-one, wrong operator, swapped branch, ...; the generator keeps the
first three that the hidden tests tell apart from the reference and from each other), the grid of
its constants, and the kind of its inputs. Bodies are Python with 4-space indents; `bend` bodies
(2-space indents) give the template's Bend counterpart, mutant for mutant with the same meaning
under u24 arithmetic, or None where there is none (string templates; Bend has no slicing).

Which templates are held out whole ("unseen templates") is `HELDOUT_TEMPLATES`: one or two per
tier, each a recombination of what the training templates teach (mod next to floordiv, drop_n
next to first_n, sum_above next to sum_plus/keep_above, clamp next to at_least/excess).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

TIERS = ("arithmetic", "strings", "lists", "conditionals")
HELDOUT_TEMPLATES = frozenset({"mod", "square_plus", "drop_n", "sum_above", "clamp"})


@dataclasses.dataclass(frozen=True)
class Template:
    name: str
    tier: str
    fn: str                       # function name, formatted with the constants
    params: str                   # "x", "x, y", "s" or "xs"
    doc: str                      # one sentence, formatted with the constants
    body: str                     # reference body (Python)
    mutants: tuple                # (kind, Python body, Bend body or None)
    grid: tuple                   # constant assignments (dicts)
    inputs: str                   # int | int2 | str | list | list+ (non-empty lists)
    bend: str | None = None       # reference body (Bend), None: no Bend counterpart
    special: Callable | None = None  # constants -> extra inputs worth testing (str templates)


def grid(when=None, **axes) -> tuple:
    keys = list(axes)
    points = [dict(zip(keys, vals)) for vals in itertools.product(*axes.values())]
    return tuple(p for p in points if when is None or when(p))


WORDS = ("ab", "cat", "dog", "sun", "red", "top", "pre", "end", "up", "go", "bee", "sky", "map", "pen",
         "box", "cup", "egg", "fox", "hat", "ink", "jam", "key", "log", "mud", "net", "owl", "pig", "rat",
         "sea", "tea", "van", "web", "yak", "zip", "ice", "art", "bus", "car", "day", "ear", "fan", "gum",
         "hen", "ivy", "jet", "kit", "lid", "mix", "nut", "oak")
SYMBOLS = (("-", "dash"), ("+", "plus"), ("*", "star"), (".", "dot"), (",", "comma"), (":", "colon"),
           (";", "semicolon"), ("/", "slash"), ("|", "bar"), ("_", "underscore"), ("=", "equals"),
           ("#", "hash"), ("~", "tilde"), ("!", "bang"), ("?", "query"))
WORD_GRID = tuple({"w": w} for w in WORDS)


def _fold(cons: str, nil: str) -> str:
    """A Bend fold over xs: `cons` (may span lines, 2-space indents) for List/Cons, `nil` for List/Nil."""
    cons = "\n".join("    " + line for line in cons.split("\n"))
    return f"fold xs:\n  case List/Cons:\n{cons}\n  case List/Nil:\n    return {nil}"


def _if(cond: str, yes: str, no: str) -> str:
    return f"if {cond}:\n    return {yes}\nelse:\n    return {no}"


def _bif(cond: str, yes: str, no: str) -> str:
    return f"if {cond}:\n  return {yes}\nelse:\n  return {no}"


def _map(head: str, nil: str = "List/Nil") -> str:
    """A Bend fold that rebuilds xs with `head` in place of each item (and `nil` at the end)."""
    return _fold(f"return List/Cons({head}, xs.tail)", nil)


KEEP = "List/Cons(xs.head, xs.tail)"

TEMPLATES: tuple[Template, ...] = (
    # -- arithmetic ---------------------------------------------------------------------------
    Template("add", "arithmetic", "add_{a}", "x", "Return x plus {a}.", "return x + {a}", (
        ("off_by_one", "return x + {a} + 1", "return x + {a} + 1"),
        ("wrong_operator", "return x - {a}", "return x - {a}"),
        ("wrong_operator", "return x * {a}", "return x * {a}"),
        ("off_by_one", "return x + {a} - 1", "return x + {a} - 1"),
    ), grid(a=range(1, 151)), "int", bend="return x + {a}"),
    Template("sub", "arithmetic", "sub_{a}", "x", "Return x minus {a}.", "return x - {a}", (
        ("off_by_one", "return x - {a} + 1", "return x - {a} + 1"),
        ("wrong_operator", "return x + {a}", "return x + {a}"),
        ("swapped_operands", "return {a} - x", "return {a} - x"),
        ("off_by_one", "return x - {a} - 1", "return x - {a} - 1"),
    ), grid(a=range(1, 151)), "int", bend="return x - {a}"),
    Template("times", "arithmetic", "times_{a}", "x", "Return x times {a}.", "return x * {a}", (
        ("off_by_one", "return x * ({a} + 1)", "return x * ({a} + 1)"),
        ("wrong_operator", "return x + {a}", "return x + {a}"),
        ("off_by_one", "return x * ({a} - 1)", "return x * ({a} - 1)"),
        ("wrong_operator", "return x // {a}", "return x / {a}"),
    ), grid(a=range(2, 61)), "int", bend="return x * {a}"),
    Template("affine", "arithmetic", "times_{a}_plus_{b}", "x", "Return {a} times x plus {b}.",
             "return {a} * x + {b}", (
        ("off_by_one", "return {a} * x + {b} + 1", "return {a} * x + {b} + 1"),
        ("wrong_operator", "return {a} * x - {b}", "return {a} * x - {b}"),
        ("precedence", "return {a} * (x + {b})", "return {a} * (x + {b})"),
        ("swapped_constants", "return {b} * x + {a}", "return {b} * x + {a}"),
    ), grid(a=range(2, 13), b=range(1, 26)), "int", bend="return {a} * x + {b}"),
    Template("floordiv", "arithmetic", "div_{a}", "x", "Return x divided by {a}, rounded down.",
             "return x // {a}", (
        ("off_by_one", "return x // {a} + 1", "return x / {a} + 1"),
        ("wrong_operator", "return x % {a}", "return x % {a}"),
        ("off_by_one", "return x // ({a} + 1)", "return x / ({a} + 1)"),
        ("wrong_operator", "return x * {a}", "return x * {a}"),
    ), grid(a=range(2, 41)), "int", bend="return x / {a}"),
    Template("mod", "arithmetic", "mod_{a}", "x", "Return the remainder of x divided by {a}.",
             "return x % {a}", (
        ("off_by_one", "return x % {a} + 1", "return x % {a} + 1"),
        ("wrong_operator", "return x // {a}", "return x / {a}"),
        ("off_by_one", "return x % ({a} + 1)", "return x % ({a} + 1)"),
        ("wrong_operator", "return x - {a}", "return x - {a}"),
    ), grid(a=range(2, 41)), "int", bend="return x % {a}"),
    Template("sum_times", "arithmetic", "add_times_{a}", "x, y", "Return x plus y times {a}.",
             "return x + y * {a}", (
        ("precedence", "return (x + y) * {a}", "return (x + y) * {a}"),
        ("swapped_operands", "return x * {a} + y", "return x * {a} + y"),
        ("off_by_one", "return x + y * ({a} + 1)", "return x + y * ({a} + 1)"),
        ("wrong_operator", "return x - y * {a}", "return x - y * {a}"),
    ), grid(a=range(2, 51)), "int2", bend="return x + y * {a}"),
    Template("square_plus", "arithmetic", "square_plus_{a}", "x", "Return x squared plus {a}.",
             "return x * x + {a}", (
        ("off_by_one", "return x * x + {a} + 1", "return x * x + {a} + 1"),
        ("wrong_operator", "return x + x + {a}", "return x + x + {a}"),
        ("wrong_operator", "return x * x - {a}", "return x * x - {a}"),
        ("precedence", "return x * (x + {a})", "return x * (x + {a})"),
    ), grid(a=range(1, 81)), "int", bend="return x * x + {a}"),
    # -- strings ------------------------------------------------------------------------------
    Template("prefix", "strings", "prefix_{w}", "s", "Return s with '{w}' added to the front.",
             'return "{w}" + s', (
        ("swapped_operands", 'return s + "{w}"', None),
        ("off_by_one", 'return "{w}" + s[1:]', None),
        ("off_by_one", 'return "{w}"[1:] + s', None),
        ("duplicated", 'return "{w}" + s + "{w}"', None),
    ), WORD_GRID, "str", special=lambda c: ["", c["w"], c["w"] + "x"]),
    Template("suffix", "strings", "suffix_{w}", "s", "Return s with '{w}' added to the end.",
             'return s + "{w}"', (
        ("swapped_operands", 'return "{w}" + s', None),
        ("off_by_one", 'return s[:-1] + "{w}"', None),
        ("off_by_one", 'return s + "{w}"[:-1]', None),
        ("duplicated", 'return "{w}" + s + "{w}"', None),
    ), WORD_GRID, "str", special=lambda c: ["", c["w"], "x" + c["w"]]),
    Template("first_n", "strings", "first_{a}_chars", "s", "Return the first {a} characters of s.",
             "return s[:{a}]", (
        ("off_by_one", "return s[:{a} + 1]", None),
        ("off_by_one", "return s[:{a} - 1]", None),
        ("wrong_slice", "return s[{a}:]", None),
        ("wrong_slice", "return s[-{a}:]", None),
    ), grid(a=range(1, 10)), "str", special=lambda c: ["abcdefghijkl", "programming", "encyclopedia"]),
    Template("drop_n", "strings", "drop_{a}_chars", "s", "Return s without its first {a} characters.",
             "return s[{a}:]", (
        ("off_by_one", "return s[{a} + 1:]", None),
        ("off_by_one", "return s[{a} - 1:]", None),
        ("wrong_slice", "return s[:{a}]", None),
        ("wrong_slice", "return s[:-{a}]", None),
    ), grid(a=range(1, 10)), "str", special=lambda c: ["abcdefghijkl", "programming", "encyclopedia"]),
    Template("count_char", "strings", "count_{c}", "s", "Return how many times '{c}' occurs in s.",
             'return s.count("{c}")', (
        ("off_by_one", 'return s.count("{c}") + 1', None),
        ("complement", 'return len(s) - s.count("{c}")', None),
        ("wrong_method", 'return s.find("{c}")', None),
        ("wrong_test", 'return int("{c}" in s)', None),
    ), grid(c="abcdefghijklmnopqrstuvwxyz"), "str",
        special=lambda c: [c["c"], c["c"] * 2, f"x{c['c']}y{c['c']}z{c['c']}", f"ab{c['c']}"]),
    Template("replace_char", "strings", "replace_{c}_with_{d}", "s", "Return s with every '{c}' replaced by '{d}'.",
             'return s.replace("{c}", "{d}")', (
        ("swapped_operands", 'return s.replace("{d}", "{c}")', None),
        ("first_only", 'return s.replace("{c}", "{d}", 1)', None),
        ("deleted", 'return s.replace("{c}", "")', None),
        ("doubled", 'return s.replace("{c}", "{d}{d}")', None),
    ), grid(c="aeiou", d="xyzqk"), "str",
        special=lambda c: [c["c"] * 3, f"b{c['c']}n{c['c']}n{c['c']}", c["d"] + c["c"], c["d"] * 2]),
    Template("starts_with", "strings", "starts_with_{w}", "s", "Return True if s starts with '{w}', otherwise False.",
             'return s.startswith("{w}")', (
        ("wrong_method", 'return s.endswith("{w}")', None),
        ("wrong_test", 'return "{w}" in s', None),
        ("negated", 'return not s.startswith("{w}")', None),
        ("off_by_one", 'return s.startswith("{w}"[1:])', None),
    ), WORD_GRID, "str",
        special=lambda c: [c["w"], c["w"] + "s", "x" + c["w"], c["w"][1:] + "x", "x" + c["w"] + "x", c["w"] * 2]),
    Template("join_with", "strings", "join_with_{name}", "s", "Return the characters of s with '{c}' between them.",
             'return "{c}".join(s)', (
        ("extra_end", 'return "{c}".join(s) + "{c}"', None),
        ("extra_start", 'return "{c}" + "{c}".join(s)', None),
        ("off_by_one", 'return "{c}".join(s[1:])', None),
        ("reversed", 'return "{c}".join(reversed(s))', None),
    ), tuple({"c": c, "name": n} for c, n in SYMBOLS), "str", special=lambda c: ["ab", "abc", "x"]),
    # -- lists --------------------------------------------------------------------------------
    Template("add_each", "lists", "add_{a}_to_each", "xs", "Return a list with {a} added to each item of xs.",
             "return [v + {a} for v in xs]", (
        ("off_by_one", "return [v + {a} + 1 for v in xs]", _map("xs.head + {a} + 1")),
        ("wrong_operator", "return [v * {a} for v in xs]", _map("xs.head * {a}")),
        ("extra_item", "return [v + {a} for v in xs] + [{a}]", _map("xs.head + {a}", "[{a}]")),
        ("wrong_operator", "return [v - {a} for v in xs]", _map("xs.head - {a}")),
    ), grid(a=range(1, 121)), "list", bend=_map("xs.head + {a}")),
    Template("scale_each", "lists", "scale_each_{a}", "xs", "Return a list with each item of xs multiplied by {a}.",
             "return [v * {a} for v in xs]", (
        ("off_by_one", "return [v * ({a} + 1) for v in xs]", _map("xs.head * ({a} + 1)")),
        ("wrong_operator", "return [v + {a} for v in xs]", _map("xs.head + {a}")),
        ("off_by_one", "return [v * {a} + 1 for v in xs]", _map("xs.head * {a} + 1")),
        ("extra_item", "return [v * {a} for v in xs] + [{a}]", _map("xs.head * {a}", "[{a}]")),
    ), grid(a=range(2, 51)), "list", bend=_map("xs.head * {a}")),
    Template("keep_above", "lists", "keep_above_{a}", "xs", "Return the items of xs that are greater than {a}.",
             "return [v for v in xs if v > {a}]", (
        ("off_by_one", "return [v for v in xs if v >= {a}]",
         _fold(_bif("xs.head >= {a}", KEEP, "xs.tail"), "List/Nil")),
        ("wrong_operator", "return [v for v in xs if v < {a}]",
         _fold(_bif("xs.head < {a}", KEEP, "xs.tail"), "List/Nil")),
        ("swapped_branch", "return [v for v in xs if v <= {a}]",
         _fold(_bif("xs.head > {a}", "xs.tail", KEEP), "List/Nil")),
        ("off_by_one", "return [v for v in xs if v > {a} + 1]",
         _fold(_bif("xs.head > {a} + 1", KEEP, "xs.tail"), "List/Nil")),
    ), grid(a=range(0, 41)), "list", bend=_fold(_bif("xs.head > {a}", KEEP, "xs.tail"), "List/Nil")),
    Template("count_above", "lists", "count_above_{a}", "xs", "Return how many items of xs are greater than {a}.",
             "return len([v for v in xs if v > {a}])", (
        ("off_by_one", "return len([v for v in xs if v >= {a}])",
         _fold(_bif("xs.head >= {a}", "1 + xs.tail", "xs.tail"), "0")),
        ("swapped_branch", "return len([v for v in xs if v <= {a}])",
         _fold(_bif("xs.head > {a}", "xs.tail", "1 + xs.tail"), "0")),
        ("off_by_one", "return len([v for v in xs if v > {a}]) + 1",
         _fold(_bif("xs.head > {a}", "1 + xs.tail", "xs.tail"), "1")),
        ("wrong_operator", "return len([v for v in xs if v < {a}])",
         _fold(_bif("xs.head < {a}", "1 + xs.tail", "xs.tail"), "0")),
    ), grid(a=range(0, 41)), "list", bend=_fold(_bif("xs.head > {a}", "1 + xs.tail", "xs.tail"), "0")),
    Template("count_equal", "lists", "count_{a}s", "xs", "Return how many items of xs are equal to {a}.",
             "return xs.count({a})", (
        ("off_by_one", "return xs.count({a}) + 1", _fold(_bif("xs.head == {a}", "1 + xs.tail", "xs.tail"), "1")),
        ("off_by_one", "return xs.count({a} + 1)", _fold(_bif("xs.head == {a} + 1", "1 + xs.tail", "xs.tail"), "0")),
        ("swapped_branch", "return len(xs) - xs.count({a})",
         _fold(_bif("xs.head == {a}", "xs.tail", "1 + xs.tail"), "0")),
        ("wrong_operator", "return len([v for v in xs if v >= {a}])",
         _fold(_bif("xs.head >= {a}", "1 + xs.tail", "xs.tail"), "0")),
    ), grid(a=range(0, 21)), "list", bend=_fold(_bif("xs.head == {a}", "1 + xs.tail", "xs.tail"), "0")),
    Template("sum_plus", "lists", "sum_plus_{a}", "xs", "Return the sum of xs plus {a}.",
             "return sum(xs) + {a}", (
        ("off_by_one", "return sum(xs) + {a} + 1", _fold("return xs.head + xs.tail", "{a} + 1")),
        ("wrong_operator", "return sum(xs) - {a}", _fold("return xs.head + xs.tail", "0 - {a}")),
        ("missing_term", "return sum(xs)", _fold("return xs.head + xs.tail", "0")),
        ("wrong_operator", "return len(xs) + {a}", _fold("return 1 + xs.tail", "{a}")),
    ), grid(a=range(1, 121)), "list", bend=_fold("return xs.head + xs.tail", "{a}")),
    Template("sum_above", "lists", "sum_above_{a}", "xs",
             "Return the sum of the items of xs that are greater than {a}.",
             "return sum(v for v in xs if v > {a})", (
        ("off_by_one", "return sum(v for v in xs if v >= {a})",
         _fold(_bif("xs.head >= {a}", "xs.head + xs.tail", "xs.tail"), "0")),
        ("swapped_branch", "return sum(v for v in xs if v <= {a})",
         _fold(_bif("xs.head > {a}", "xs.tail", "xs.head + xs.tail"), "0")),
        ("wrong_operator", "return sum(v for v in xs if v < {a})",
         _fold(_bif("xs.head < {a}", "xs.head + xs.tail", "xs.tail"), "0")),
        ("off_by_one", "return sum(v for v in xs if v > {a}) + 1",
         _fold(_bif("xs.head > {a}", "xs.head + xs.tail", "xs.tail"), "1")),
    ), grid(a=range(1, 41)), "list", bend=_fold(_bif("xs.head > {a}", "xs.head + xs.tail", "xs.tail"), "0")),
    Template("max_plus", "lists", "max_plus_{a}", "xs", "Return the largest item of xs plus {a}.",
             "return max(xs) + {a}", (
        ("wrong_function", "return min(xs) + {a}", None),
        ("off_by_one", "return max(xs) + {a} + 1", None),
        ("wrong_operator", "return max(xs) - {a}", None),
        ("wrong_index", "return xs[0] + {a}", None),
    ), grid(a=range(1, 61)), "list+"),
    Template("take_n", "lists", "take_{a}", "xs", "Return the first {a} items of xs.", "return xs[:{a}]", (
        ("off_by_one", "return xs[:{a} + 1]", None),
        ("off_by_one", "return xs[:{a} - 1]", None),
        ("wrong_slice", "return xs[{a}:]", None),
        ("wrong_slice", "return xs[-{a}:]", None),
    ), grid(a=range(1, 7)), "list"),
    # -- conditionals -------------------------------------------------------------------------
    Template("distance", "conditionals", "distance_to_{a}", "x", "Return the distance between x and {a}.",
             _if("x > {a}", "x - {a}", "{a} - x"), (
        ("swapped_branch", _if("x > {a}", "{a} - x", "x - {a}"), _bif("x > {a}", "{a} - x", "x - {a}")),
        ("wrong_operator", _if("x > {a}", "x - {a}", "{a} + x"), _bif("x > {a}", "x - {a}", "{a} + x")),
        ("off_by_one", _if("x > {a}", "x - {a} + 1", "{a} - x"), _bif("x > {a}", "x - {a} + 1", "{a} - x")),
        ("off_by_one", _if("x > {a}", "x - {a}", "{a} - x + 1"), _bif("x > {a}", "x - {a}", "{a} - x + 1")),
    ), grid(a=range(1, 81)), "int", bend=_bif("x > {a}", "x - {a}", "{a} - x")),
    Template("excess", "conditionals", "excess_over_{a}", "x", "Return how much x exceeds {a}, or 0 if it does not.",
             _if("x > {a}", "x - {a}", "0"), (
        ("swapped_branch", _if("x > {a}", "0", "x - {a}"), _bif("x > {a}", "0", "x - {a}")),
        ("off_by_one", _if("x > {a}", "x - {a} + 1", "0"), _bif("x > {a}", "x - {a} + 1", "0")),
        ("off_by_one", _if("x > {a}", "x - {a}", "1"), _bif("x > {a}", "x - {a}", "1")),
        ("wrong_operator", _if("x > {a}", "x + {a}", "0"), _bif("x > {a}", "x + {a}", "0")),
    ), grid(a=range(1, 81)), "int", bend=_bif("x > {a}", "x - {a}", "0")),
    Template("halve_even", "conditionals", "halve_or_times_{a}", "x",
             "Return half of x if x is even, otherwise x times {a} plus 1.",
             _if("x % 2 == 0", "x // 2", "x * {a} + 1"), (
        ("swapped_branch", _if("x % 2 == 0", "x * {a} + 1", "x // 2"), _bif("x % 2 == 0", "x * {a} + 1", "x / 2")),
        ("off_by_one", _if("x % 2 == 0", "x // 2", "x * {a}"), _bif("x % 2 == 0", "x / 2", "x * {a}")),
        ("off_by_one", _if("x % 2 == 0", "x // 2 + 1", "x * {a} + 1"), _bif("x % 2 == 0", "x / 2 + 1", "x * {a} + 1")),
        ("wrong_operator", _if("x % 2 == 0", "x // 2", "x + {a} + 1"), _bif("x % 2 == 0", "x / 2", "x + {a} + 1")),
    ), grid(a=range(2, 31)), "int", bend=_bif("x % 2 == 0", "x / 2", "x * {a} + 1")),
    Template("at_least", "conditionals", "at_least_{a}", "x", "Return the larger of x and {a}.",
             _if("x > {a}", "x", "{a}"), (
        ("swapped_branch", _if("x > {a}", "{a}", "x"), _bif("x > {a}", "{a}", "x")),
        ("off_by_one", _if("x > {a}", "x", "{a} + 1"), _bif("x > {a}", "x", "{a} + 1")),
        ("off_by_one", _if("x > {a}", "x + 1", "{a}"), _bif("x > {a}", "x + 1", "{a}")),
        ("wrong_operator", _if("x > {a}", "x + {a}", "{a}"), _bif("x > {a}", "x + {a}", "{a}")),
    ), grid(a=range(1, 81)), "int", bend=_bif("x > {a}", "x", "{a}")),
    Template("parity_step", "conditionals", "even_plus_odd_minus_{a}", "x",
             "Return x plus {a} if x is even, otherwise x minus {a}.",
             _if("x % 2 == 0", "x + {a}", "x - {a}"), (
        ("swapped_branch", _if("x % 2 == 0", "x - {a}", "x + {a}"), _bif("x % 2 == 0", "x - {a}", "x + {a}")),
        ("off_by_one", _if("x % 2 == 0", "x + {a} + 1", "x - {a}"), _bif("x % 2 == 0", "x + {a} + 1", "x - {a}")),
        ("off_by_one", _if("x % 2 == 0", "x + {a}", "x - {a} + 1"), _bif("x % 2 == 0", "x + {a}", "x - {a} + 1")),
        ("wrong_operator", _if("x % 2 == 0", "x * {a}", "x - {a}"), _bif("x % 2 == 0", "x * {a}", "x - {a}")),
    ), grid(a=range(1, 41)), "int", bend=_bif("x % 2 == 0", "x + {a}", "x - {a}")),
    Template("clamp", "conditionals", "clamp_{a}_{b}", "x", "Return x limited to the range {a} to {b}.",
             "if x < {a}:\n    return {a}\nelif x > {b}:\n    return {b}\nelse:\n    return x", (
        ("swapped_branch", "if x < {a}:\n    return {b}\nelif x > {b}:\n    return {a}\nelse:\n    return x",
         "if x < {a}:\n  return {b}\nelif x > {b}:\n  return {a}\nelse:\n  return x"),
        ("off_by_one", "if x < {a}:\n    return {a}\nelif x > {b}:\n    return {b} + 1\nelse:\n    return x",
         "if x < {a}:\n  return {a}\nelif x > {b}:\n  return {b} + 1\nelse:\n  return x"),
        ("off_by_one", "if x < {a}:\n    return {a} + 1\nelif x > {b}:\n    return {b}\nelse:\n    return x",
         "if x < {a}:\n  return {a} + 1\nelif x > {b}:\n  return {b}\nelse:\n  return x"),
        ("wrong_operator", "if x > {a}:\n    return {a}\nelif x > {b}:\n    return {b}\nelse:\n    return x",
         "if x > {a}:\n  return {a}\nelif x > {b}:\n  return {b}\nelse:\n  return x"),
    ), grid(a=range(1, 16), b=range(5, 56, 5), when=lambda p: p["b"] >= p["a"] + 5), "int",
        bend="if x < {a}:\n  return {a}\nelif x > {b}:\n  return {b}\nelse:\n  return x"),
)
