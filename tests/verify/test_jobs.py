"""Job validation and the value codec that carries data between judge and candidate."""

import math

import pytest

from jaxdiff.verify import proto, pyharness
from jaxdiff.verify.jobs import JobError, Limits, result, validate

LIM = Limits()


def test_valid_jobs_are_normalised():
    j = validate({"id": 1, "program": "x = 1", "tests": "assert x == 1"}, LIM)
    assert j["language"] == "python"
    b = validate({"id": "b", "language": "bend", "program": "def main():\n  return 1"}, LIM)
    assert b["runtime"] == "run-c"


@pytest.mark.parametrize("job, words", [
    ("not a dict", "JSON object"),
    ({"id": 1}, "missing field 'program'"),
    ({"program": 3}, "field 'program' must be str"),
    ({"program": "", "language": "rust"}, "'language' must be one of"),
    ({"program": "", "tests": []}, "one or more strings"),
    ({"program": "", "tests": "", "expected_stdout": ""}, "either 'tests' or 'expected_stdout'"),
    ({"program": "", "entry_point": "f"}, "needs 'tests'"),
    ({"program": "", "tests": "", "entry_point": "not an id"}, "not an identifier"),
    ({"program": "", "language": "bend", "runtime": "run-js"}, "'runtime' must be one of"),
    ({"program": "", "language": "bend", "tests": "x"}, "only applies to python"),
    ({"program": "", "expected_result": "1"}, "only applies to bend"),
    ({"program": "", "colour": "red"}, "unknown field(s) ['colour']"),
    ({"program": "x" * (LIM.max_program_bytes + 1)}, "max_program_bytes"),
    ({"id": True, "program": ""}, "'id' must be"),
])
def test_bad_jobs_name_the_field(job, words):
    with pytest.raises(JobError) as e:
        validate(job, LIM)
    assert words in str(e.value)


def test_result_has_every_field_and_truncates_detail():
    r = result("a", "failed", "x" * 50, 1.23456, {"cpu_ms": 1}, detail_chars=10)
    assert set(r) == {"id", "status", "passed", "wall_ms", "detail", "stats"}
    assert r["passed"] is False and r["wall_ms"] == 1.235
    assert r["detail"].startswith("x" * 10) and "40 more chars" in r["detail"]
    assert result("a", "passed")["passed"] is True
    with pytest.raises(ValueError):
        result("a", "maybe")


def test_limits_reject_nonsense():
    with pytest.raises(ValueError):
        Limits(timeout_s=0)
    with pytest.raises(ValueError):
        Limits(nofile=3)
    assert Limits(timeout_s=2.5).cpu_s == 3


def _roundtrip(v):
    handles = []
    enc = pyharness.encode(v, lambda o: handles.append(o) or {"h": len(handles) - 1})
    return pyharness.decode(proto.json.loads(proto.json.dumps(enc)), lambda h: ("H", handles[h]))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 10**1000, 1.5, -0.0, math.inf, "ü\n", b"\x00\xff", 3 + 4j,
    [1, [2, (3, "a")]], (), (1,), {1: "a", (2, 3): [None]}, {1, 2}, frozenset({"x"}), set(),
])
def test_plain_values_round_trip_with_exact_types(value):
    back = _roundtrip(value)
    assert back == value and type(back) is type(value)


def test_nan_round_trips():
    assert math.isnan(_roundtrip(float("nan")))


def test_subclasses_travel_as_their_plain_value():
    class Liar(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    class Pair(tuple):
        pass

    assert _roundtrip(Liar(3)) == 3 and type(_roundtrip(Liar(3))) is int
    assert _roundtrip(Liar(3)) != 4
    assert type(_roundtrip(Pair((1, 2)))) is tuple


def test_other_objects_become_handles():
    obj = object()
    assert _roundtrip([obj]) == [("H", obj)]


@pytest.mark.parametrize("garbage", [{"x": 1}, {"t": 3}, {"d": [[1]]}, {"c": ["a", 1]}, {"h": "1"}, {"t": [], "s": []}])
def test_decoder_refuses_malformed_values(garbage):
    with pytest.raises(proto.ProtocolError):
        pyharness.decode(garbage, lambda h: h)


def test_decoder_refuses_deep_nesting():
    v = []
    for _ in range(300):
        v = [v]
    with pytest.raises(proto.ProtocolError):
        pyharness.decode(v, lambda h: h)
