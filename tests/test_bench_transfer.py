"""bench/transfer.py --quick: every start on every protocol, one JSON line, runs reusable."""

import json
import os

import numpy as np
import pytest
from care_testing import load_bench


@pytest.mark.slow  # 2 tiny pretrainings, 17 fine-tunings: 4-7 min on 2 shared cores
@pytest.mark.usefixtures("fmnist_small")
def test_quick_transfer_table(tmp_path, capsys):
    bench = load_bench("transfer")
    out = bench.main(["--quick", "--work_dir", str(tmp_path)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["table"] == json.loads(json.dumps(out["table"]))
    assert set(out["table"]) == set(bench.PROTOCOLS)
    for protocol, starts in out["table"].items():
        assert set(starts) == set(bench.STARTS)
        for scores in starts.values():
            assert set(scores) == {0}
            assert 0 <= scores[0] <= 100, (protocol, scores)
    # top-1 on 10 classes is a multiple of 1/eval_limit, so a real prediction count
    for scores in out["table"]["finetune_1"].values():
        assert scores[0] * out["budget"]["eval_limit"] / 100 == pytest.approx(
            round(scores[0] * out["budget"]["eval_limit"] / 100), abs=0.01
        )
    assert out["wall_s"] > 0 and all(t >= 0 for t in out["timings"].values())
    assert out["reused"] == [] and {f"build/{s}/0" for s in bench.STARTS} <= set(out["timings"])
    for start in bench.STARTS:  # every run is complete, so a rerun reuses it
        assert bench.complete(os.path.join(tmp_path, f"{start}_seed0"))
    again = bench.main(
        ["--quick", "--work_dir", str(tmp_path), "--starts", "care", "--protocols", "finetune_1"]
    )
    assert again["reused"] == ["care_seed0"] and "build/care/0" not in again["timings"]
    assert again["reused_cells"] == ["finetune_1/care/0"]  # the score is kept, too
    assert again["table"]["finetune_1"]["care"][0] == out["table"]["finetune_1"]["care"][0]
    assert set(again["table"]) == {"finetune_1"} and set(again["table"]["finetune_1"]) == {"care"}
    # the supervised start is the random one after training: its weights moved
    from care_tf.model_dir import load_feature_model

    rand = load_feature_model(str(tmp_path / "random_seed0"))
    sup = load_feature_model(str(tmp_path / "supervised_seed0"))
    assert [w.shape for w in rand.weights] == [w.shape for w in sup.weights]
    assert any(
        not np.allclose(a, b) for a, b in zip(rand.get_weights(), sup.get_weights(), strict=True)
    )


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--task_image_size", "40"], "--task_image_size"),
        (["--pretrain_steps", "0"], "--pretrain_steps"),
        (["--scenes", "4", "0"], "--scenes"),
        (["--ft_max_steps", "-1"], "--ft_max_steps"),
        (["--segment_epochs", "0"], "--segment_epochs"),
    ],
)
def test_bad_budget_is_one_line(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_bench("transfer").main(["--quick", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "error: " + named in err[-1]
