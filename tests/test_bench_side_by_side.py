"""bench/side_by_side.py: alternates workers one step at a time and reports their rates."""

import sys

import pytest
from care_testing import load_bench

# A worker speaking the protocol: warm-up line, then one "step" per stdin line.
WORKER = r"""
import json, sys, time
seconds, batch = float(sys.argv[1]), int(sys.argv[2])
print("some log line", flush=True)
print(json.dumps({"ready": "fake", "batch": batch}), flush=True)
for _ in sys.stdin:
    time.sleep(seconds)
    print(json.dumps({"step_s": seconds}), flush=True)
"""


def test_rates_and_ratios_follow_the_workers_step_times(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    side_by_side = load_bench("side_by_side")
    figures = side_by_side.main(
        [
            "--rounds",
            "3",
            "--worker",
            f"slow={sys.executable} {script} 0.2 8",
            "--worker",
            f"fast={sys.executable} {script} 0.05 4",
        ]
    )
    slow, fast = figures["workers"]["slow"], figures["workers"]["fast"]
    assert slow["median_step_s"] == 0.2 and fast["median_step_s"] == 0.05
    assert slow["images_per_s"] == 40.0 and fast["images_per_s"] == 80.0
    assert fast["ratio_to_slow"] == 2.0 and slow["ratio_to_slow"] == 1.0
    assert figures["rounds"] == 3 and figures["seconds"] >= 3 * 0.25


def test_a_worker_that_dies_is_named(tmp_path):
    script = tmp_path / "dead.py"
    script.write_text("import sys; sys.exit(3)\n")
    side_by_side = load_bench("side_by_side")
    with pytest.raises(RuntimeError, match="worker 'dead' exited"):
        side_by_side.main(["--rounds", "1", "--worker", f"dead={sys.executable} {script}"])
