"""The seed table (experiments/seeds.py): per-seed scores, their means and the paired intervals, from the runs'
metrics; the experiments found by name in `dvc exp show --json`. `make seeds` itself: tests/test_experiments.py."""

from __future__ import annotations

import pytest

from experiments.seeds import named_runs, seed_tables
from spotify_genre.errors import PipelineError


def _interval(estimate: float) -> dict[str, float]:
    return {"estimate": estimate, "low": estimate - 0.005, "high": estimate + 0.005}


def _metrics(accuracy: float, peer_accuracy: float) -> dict:
    """A reports/metrics.json with the fields the table reads: the MLP, a floor and one peer."""
    def peer(score: float) -> dict:
        return {"accuracy": score, "f1_macro": score - 0.002, "val_accuracy": score + 0.001,
                "val_f1_macro": score - 0.001,
                "difference": {"accuracy": _interval(accuracy - score), "f1_macro": _interval(accuracy - score)}}

    return {"accuracy": accuracy, "f1_macro": accuracy - 0.004,
            "val": {"accuracy": accuracy + 0.01, "f1_macro": accuracy + 0.008},
            "baselines": {"majority": peer(0.18), "xgboost": peer(peer_accuracy)}}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_table_has_each_seed_the_means_and_the_paired_intervals_and_leaves_out_the_floor():
    lines = seed_tables({4: _metrics(0.66, 0.67), 2: _metrics(0.64, 0.63)})
    scores, intervals = lines[:lines.index("")], lines[lines.index("") + 1:]

    assert _cells(scores[0]) == ["test accuracy / macro-F1", "seed 2", "seed 4", "mean", "val mean"]
    mlp, xgboost = (_cells(line) for line in scores[2:])
    assert mlp == ["MLP", "0.6400 / 0.6360", "0.6600 / 0.6560", "**0.6500 / 0.6460**", "0.6600 / 0.6580"]
    assert xgboost == ["XGBoost", "0.6300 / 0.6280", "0.6700 / 0.6680", "**0.6500 / 0.6480**", "0.6510 / 0.6490"]
    assert len(scores) == 4 and not any("majority" in line.lower() for line in lines)

    assert _cells(intervals[0]) == ["MLP − peer, paired 95% interval (accuracy; macro-F1)", "seed 2", "seed 4"]
    assert _cells(intervals[2]) == ["XGBoost", "+0.0100 [+0.0050, +0.0150]; +0.0100 [+0.0050, +0.0150]",
                                    "-0.0100 [-0.0150, -0.0050]; -0.0100 [-0.0150, -0.0050]"]


def _shown(*experiments: tuple[str, int, dict | None]) -> list[dict]:
    """`dvc exp show --json` as DVC 3 writes it: the workspace, then the baseline commit with its experiments."""
    def rev(name: str, seed: int, metrics: dict | None) -> dict:
        data = {"params": {"params.yaml": {"data": {"split": {"seed": seed}, "lr": 0.05}}},
                "metrics": {} if metrics is None else {"reports/metrics.json": {"data": metrics}}}
        return {"rev": f"{seed:07x}", "name": name, "data": data}

    return [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
            {"rev": "0123abc", "name": "main", "data": {},
             "experiments": [{"revs": [rev(*experiment)]} for experiment in experiments]}]


def test_runs_are_found_by_name_and_keyed_by_split_seed():
    shown = _shown(("seeds-1-1", 2, _metrics(0.64, 0.63)), ("seeds-1-2", 3, _metrics(0.65, 0.66)),
                   ("seeds-10-1", 7, _metrics(0.5, 0.5)), ("other", 9, _metrics(0.5, 0.5)))
    runs = named_runs(shown, "seeds-1")
    assert sorted(runs) == [2, 3] and runs[3]["accuracy"] == 0.65
    assert sorted(named_runs(_shown(("single", 5, _metrics(0.6, 0.6))), "single")) == [5]


@pytest.mark.parametrize(("shown", "expected"), [
    (_shown(("seeds-1-1", 2, None)), "experiment seeds-1-1: no reports/metrics.json, so it failed"),
    (_shown(("seeds-1-1", 2, _metrics(0.6, 0.6)), ("seeds-1-2", 2, _metrics(0.6, 0.6))), "split seed 2 appears twice"),
    (_shown(("other-1", 2, _metrics(0.6, 0.6))), "no experiment named 'seeds-1' or seeds-1-N"),
])
def test_a_failed_doubled_or_missing_run_is_one_clear_error(shown, expected):
    with pytest.raises(PipelineError, match=expected):
        named_runs(shown, "seeds-1")
