"""bench/robustness.py: how outcomes are classified, and a few real cases end to end."""

import subprocess

from care_testing import load_bench

bench = load_bench("robustness")


def _proc(code, stderr, stdout=""):
    return subprocess.CompletedProcess([], code, stdout, stderr)


def test_classification():
    error = bench.Case("x", [])
    ok = bench.Case("y", [], "ok")
    assert bench.classify(error, 2, "note\nerror: --limit must be >= 1.\n") == "clear_error"
    assert bench.classify(error, 2, "usage: p\np: error: argument --k: invalid\n") == "clear_error"
    assert bench.classify(error, 1, "Traceback (most recent call last):\n  ...\nValueError\n") == (
        "traceback"
    )
    assert bench.classify(error, 0, "") == "silent"
    assert bench.classify(error, -11, "") == "crash"
    assert bench.classify(error, 1, "something went wrong\n") == "unclear"
    assert bench.classify(error, 1, "error: unexpected KeyError: 'x' (rerun ...)\n") == "unclear"
    assert bench.classify(ok, 2, "error: no\n") == "refused"
    lost = bench.Case("z", [], "error", check=lambda proc: "data_lost")
    assert bench.classify(lost, 2, "error: refused\n", _proc(2, "")) == "data_lost"


def test_cases_cover_every_entry_point(tmp_path):
    cases = bench.build_cases(str(tmp_path))
    names = [c.name for c in cases]
    prefixes = ("train:", "evaluate:", "export:", "make_tfrecords:", "convert:")
    for prefix in (*prefixes, "care_tf.train --help"):
        assert any(n.startswith(prefix) for n in names), prefix
    assert len(set(names)) == len(names)
    assert any(c.needs for c in cases)  # the cases that wait for other fixes are marked
    quick = [c for c in cases if c.quick]
    assert 20 < len(quick) < len(cases)


def test_cheap_cases_run_for_real(tmp_path):
    cases = {c.name: c for c in bench.build_cases(str(tmp_path))}
    for name in ("train: --max_steps 0", "evaluate: --limit -5", "make_tfrecords: --num_shards 0",
                 "care_tf.evaluate --help"):  # fmt: skip
        result = bench.run_case(cases[name])
        want = "ok" if name.endswith("--help") else "clear_error"
        assert result["outcome"] == want, result
