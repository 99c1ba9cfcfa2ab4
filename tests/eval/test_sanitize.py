"""The sanitiser: fenced blocks, prompt continuation, helpers kept, junk cut, never a crash."""

import pytest

from jaxdiff.eval.sanitize import extract_code, sanitize

PROMPT = ('from typing import List\n\n\ndef total(xs: List[int]) -> int:\n'
          '    """Sum of xs.\n    >>> total([1, 2])\n    3\n    """\n')


def run(program, *args):
    ns = {}
    exec(program, ns)
    return ns["total"](*args)


def test_plain_continuation_is_kept_as_is():
    s = sanitize("    return sum(xs)\n", PROMPT, "total")
    assert s.program == PROMPT + "    return sum(xs)\n" and s.completion == "    return sum(xs)\n"
    assert s.notes == () and s.parsed


def test_fenced_block_with_the_whole_function_follows_the_prompt():
    text = ("Sure! Here is the code:\n\n```python\ndef total(xs):\n    return sum(xs)\n```\n\n"
            "```\nprint(total([1]))\n```\nIt adds the items.")
    s = sanitize(text, PROMPT, "total")
    assert s.program == PROMPT + "\ndef total(xs):\n    return sum(xs)\n"
    assert s.program.startswith(PROMPT) and s.completion == s.program[len(PROMPT):]
    assert "took fenced block 1 of 2 (python)" in s.notes
    assert any("defines total itself" in n for n in s.notes)
    assert run(s.program, [1, 2, 3]) == 6


def test_the_block_that_defines_the_entry_point_wins():
    text = "```python\nimport math\n```\nthen\n```python\ndef total(xs):\n    return sum(xs)\n```\n"
    assert "def total" in extract_code(text, "total")


def test_unclosed_fence_runs_to_the_end():
    s = sanitize("```python\n    return sum(xs)\n", PROMPT, "total")
    assert s.completion == "    return sum(xs)\n"


def test_closing_fence_after_a_continuation_is_cut():
    s = sanitize("    return sum(xs)\n```\n\nThis sums the list.\n", PROMPT, "total")
    assert s.completion == "    return sum(xs)\n"
    assert "cut a closing ``` fence" in s.notes[0]


def test_echoed_prompt_is_continued_after():
    s = sanitize(PROMPT + "    return sum(xs)\n", PROMPT, "total")
    assert s.program == PROMPT + "    return sum(xs)\n"
    assert "repeats the prompt" in s.notes[0]


def test_helpers_it_depends_on_are_kept_transitively_and_the_rest_cut():
    text = ("    return _twice(helper(xs)) + OFFSET\n\n\nOFFSET = 0\n\n\ndef helper(xs):\n    return sum(xs) // 2\n\n\n"
            "def _twice(v):\n    return 2 * v + _fix(v)\n\n\ndef _fix(v):\n    return 0\n\n\n"
            "def unrelated():\n    return 42\n\n\nx = 5\nprint(total([1, 2]))\nassert total([2]) == 2\n\n\n"
            "if __name__ == '__main__':\n    import doctest\n    doctest.testmod()\n")
    s = sanitize(text, PROMPT, "total")
    for kept in ("OFFSET = 0", "def helper", "def _twice", "def _fix"):
        assert kept in s.program
    for cut in ("unrelated", "print(", "assert total", "doctest", "x = 5"):
        assert cut not in s.program
    note = next(n for n in s.notes if n.startswith("cut FunctionDef"))
    assert "unrelated" in note and "if __name__ block" in note and "Assert" in note and "Expr" in note
    assert run(s.program, [2, 4]) == 6


def test_imports_anywhere_in_the_completion_are_kept():
    text = "    return int(math.fsum(xs))\n\nimport math\nprint('hi')\n"
    s = sanitize(text, PROMPT, "total")
    assert "import math" in s.program and "print" not in s.program
    assert run(s.program, [1, 2]) == 3


def test_a_local_name_does_not_keep_a_top_level_statement_alive():
    s = sanitize("    x = sum(xs)\n    return x\n\nx = total(None)\n", PROMPT, "total")
    assert "total(None)" not in s.program and run(s.program, [1]) == 1


def test_the_prompt_is_never_trimmed():
    prompt = "def helper(v):\n    return v\n\n\ndef f(x):\n    \"\"\"Doc.\"\"\"\n"
    s = sanitize("    return x\n\nprint(1)\n", prompt, "f")
    assert s.program == prompt + "    return x\n"  # helper is kept though f never calls it (tests may)


def test_junk_after_the_function_is_cut():
    text = "    return sum(xs)\n\nThis function returns the sum of the list.\n\nExample: total([1])"
    s = sanitize(text, PROMPT, "total")
    assert s.program == PROMPT + "    return sum(xs)\n"
    assert s.notes[0] == "dropped 1 line(s) of prose" and s.parsed  # and the annotated "Example" is cut


def test_prose_around_and_between_functions_is_dropped():
    text = ("Here is the solution:\ndef total(xs):\n    return helper(xs)\n\nNow the helper, which sums:\n"
            "def helper(xs):\n    return sum(xs)\n\nIt's O(n).\n")
    s = sanitize(text, PROMPT, "total")
    assert s.notes[0] == "the text defines total itself: appended after the prompt as a whole program"
    assert s.notes[1] == "dropped 3 line(s) of prose"
    assert "def helper" in s.program and "Here is" not in s.program and run(s.program, [1, 2]) == 3


def test_a_generation_cut_off_mid_statement_keeps_what_parses():
    s = sanitize("    t = 0\n    for v in xs:\n        t += v\n    return (t +\n", PROMPT, "total")
    assert s.program == PROMPT + "    t = 0\n    for v in xs:\n        t += v\n"
    assert "was never closed" in s.notes[0]


@pytest.mark.parametrize("text", ["}}}{{{ ((((", "\x00\x01 binary", "    return sum(xs\n" * 3, "", "\n\n",
                                  "```", "``````", "```python\n```", "'''" * 5])
def test_unparsable_or_empty_text_never_raises(text):
    s = sanitize(text, PROMPT, "total")
    assert s.program.startswith(PROMPT) and isinstance(s.notes, tuple)


def test_an_unparsable_prompt_falls_back_to_the_untrimmed_program():
    prompt = "def f(x):\n    return x +"  # ends mid-expression: nothing parses without the model's text
    s = sanitize(" (((\n", prompt, "f")
    assert s.program == prompt + " (((\n" and not s.parsed
    assert s.notes[-1].startswith("unparsable") and "judged untrimmed" in s.notes[-1]


def test_bend_fence_header_and_main():
    prompt = "# Return x plus 1.\ndef inc(x):\n"
    text = "```bend\ndef inc(x):\n  return x + 1\n\ndef main():\n  return inc(1)\n```"
    s = sanitize(text, prompt, "inc", language="bend")
    assert s.completion == "  return x + 1\n\n" and s.program == prompt + s.completion
    assert any("def main" in n for n in s.notes)


def test_infill_takes_the_fence_only():
    s = sanitize("```python\n        x += 1\n```", "def f(x):\n", "f", infill=True)
    assert s.completion == "        x += 1\n" and s.program == "def f(x):\n        x += 1\n"
