"""bench/fit_route.py --quick: both routes train the same weights, so their kNN is equal."""

import pytest
from care_testing import load_bench


@pytest.mark.slow  # two tiny trainings, one in a subprocess (about a minute)
@pytest.mark.usefixtures("fmnist_small")
def test_quick_fit_and_cli_routes_agree(tmp_path, capsys):
    out = load_bench("fit_route").main(
        ["--quick", "--work_dir", str(tmp_path), "--linear_epochs", "1"]
    )
    assert set(out["fit"]) == set(out["cli"]) == set(out["random"]) == {0}
    assert 0 < out["random"][0] <= 100 and 0 < out["fit"][0] <= 100
    assert out["fit"][0] == out["cli"][0]  # same config and seed: the same weights
    assert out["fit_gain"] == pytest.approx(out["fit"][0] - out["random"][0], abs=0.01)
    lin = out["linear"]
    assert 0 < lin["random"][0] <= 100 and lin["fit"][0] == lin["cli"][0]
    assert out["fit_linear_gain"] == pytest.approx(lin["fit"][0] - lin["random"][0], abs=0.01)
    assert capsys.readouterr().out.strip().startswith('{"config"')
