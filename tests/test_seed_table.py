"""The seed tables (experiments/seeds.py): the headline by scenario with its t-intervals over seeds and verdicts, the
per-seed tables, and the experiments found by name and grouping in `dvc exp show --json`. `make seeds` itself:
tests/test_experiments.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from scipy.stats import t as student_t

from experiments.seeds import named_runs, seed_tables
from spotify_genre.errors import PipelineError
from experiments.seeds import (headline_table, kept, mean_interval, named_runs, saved_runs, seed_tables, seeds_text,
                               validation_table, verdict)


def _interval(estimate: float) -> dict[str, float]:
    return {"estimate": estimate, "low": estimate - 0.005, "high": estimate + 0.005}


def _peer(mlp: float, score: float) -> dict:
    return {"accuracy": score, "f1_macro": score - 0.002, "val_accuracy": score + 0.001, "val_f1_macro": score - 0.001,
            "difference": {"accuracy": _interval(mlp - score), "f1_macro": _interval(mlp - score)}}


def _slice(songs: int, mlp: float, xgboost: float) -> dict:
    return {"songs": songs, "accuracy": mlp, "f1_macro": mlp - 0.01,
            "baselines": {"majority": _peer(mlp, 0.18), "xgboost": _peer(mlp, xgboost)}}


def _metrics(accuracy: float, peer_accuracy: float, known: tuple[float, float] = (0.84, 0.85)) -> dict:
    """A reports/metrics.json with the fields the tables read: the MLP, a floor and one peer, overall and by slice."""
    return {"accuracy": accuracy, "f1_macro": accuracy - 0.004,
            "val": {"accuracy": accuracy + 0.01, "f1_macro": accuracy + 0.008},
            "per_class": {}, "intervals": {},
            "baselines": {"majority": _peer(accuracy, 0.18), "xgboost": _peer(accuracy, peer_accuracy)},
            "novelty": {"test": {"known_album": _slice(1300, *known), "new_album": _slice(2400, 0.65, 0.66),
                                 "new_artist": _slice(1200, 0.55, 0.55)},
                        "val": {"known_album": {"songs": 1300, "accuracy": accuracy + 0.2, "f1_macro": accuracy + 0.19},
                                "new_album": {"songs": 2400, "accuracy": accuracy, "f1_macro": accuracy - 0.01},
                                "new_artist": {"songs": 0, "share": 0.0}}}}


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_mean_interval_is_the_t_interval_over_seeds_by_hand():
    values = [0.01, 0.02, 0.03]
    mean, low, high = mean_interval(values)
    half = student_t.ppf(0.975, 2) * 0.01 / math.sqrt(3)  # the standard deviation of the three is 0.01
    assert mean == pytest.approx(0.02) and low == pytest.approx(0.02 - half) and high == pytest.approx(0.02 + half)
    assert verdict(low, high) == "level"  # 4.30 * 0.0058 = 0.025 > 0.02
    assert verdict(*mean_interval([0.010, 0.011, 0.012])[1:]) == "ahead"
    assert verdict(*mean_interval([-0.010, -0.011, -0.012])[1:]) == "behind"
    assert verdict(*mean_interval([0.5])[1:]) == "one seed: no verdict"


def test_the_headline_has_one_row_per_scenario_with_how_it_was_measured():
    protocols = {"track_id": {101: _metrics(0.68, 0.67, (0.84, 0.83)), 102: _metrics(0.70, 0.69, (0.86, 0.85))},
                 "track_artist": {101: _metrics(0.55, 0.56), 102: _metrics(0.57, 0.58)}}
    lines = headline_table(protocols)
    assert _cells(lines[0])[:3] == ["scenario", "measured on", "MLP test accuracy"]
    rows = [_cells(line) for line in lines[2:]]
    assert [row[0] for row in rows] == ["catalogue completion: the album has training songs",
                                        "new album of a known artist", "new artist",
                                        "every song of a split grouped by track"]
    known = rows[0]
    half = student_t.ppf(0.975, 1) * 0.01 * math.sqrt(2) / math.sqrt(2)  # two seeds 0.02 apart: sd 0.0141
    assert known[1] == "split grouped by track, this slice (about 1,300 songs); seeds 101, 102"
    assert known[2] == f"0.8500 [{0.85 - half:.4f}, {0.85 + half:.4f}]"
    assert known[4].startswith("XGBoost 0.8400 [") and known[5] == "+0.0100 [+0.0100, +0.0100]"
    assert known[6] == "ahead"  # the same +0.01 on both seeds: no spread, the interval excludes 0
    assert rows[1][5] == "-0.0100 [-0.0100, -0.0100]" and rows[1][6] == "behind"
    assert rows[2][1] == "split grouped by artist, this slice (about 1,200 songs); seeds 101, 102"
    assert seeds_text([101, 102, 103]) == "101–103" and seeds_text([2, 3, 7]) == "2, 3, 7"
    assert rows[2][6] == "level"  # the same score on both seeds: a difference of exactly 0
    assert not any("majority" in line.lower() for line in lines)


def test_a_scenario_without_its_runs_is_left_out():
    rows = headline_table({"track_id": {7: _metrics(0.68, 0.67)}})[2:]
    assert len(rows) == 3 and all(_cells(row)[6] == "one seed: no verdict" for row in rows)


def test_the_per_seed_tables_have_each_seed_the_means_and_the_paired_intervals():
    lines = seed_tables({"track_id": {4: _metrics(0.66, 0.67), 2: _metrics(0.64, 0.63)}})
    assert lines[0] == "split grouped by track, every test song:"
    scores = lines[2:6]
    assert _cells(scores[0]) == ["test accuracy / macro-F1", "seed 2", "seed 4", "mean"]
    assert _cells(scores[2]) == ["MLP", "0.6400 / 0.6360", "0.6600 / 0.6560", "0.6500 / 0.6460"]
    assert _cells(scores[3]) == ["XGBoost", "0.6300 / 0.6280", "0.6700 / 0.6680", "0.6500 / 0.6480"]
    assert _cells(lines[9]) == ["XGBoost", "+0.0100 [+0.0050, +0.0150]; +0.0100 [+0.0050, +0.0150]",
                                "-0.0100 [-0.0150, -0.0050]; -0.0100 [-0.0150, -0.0050]"]
    titles = [line for line in lines if line.endswith(":")]
    assert titles == ["split grouped by track, every test song:", "split grouped by track, album has training songs:",
                      "split grouped by track, new album, known artist:", "split grouped by track, new artist:"]
    assert not any("majority" in line.lower() for line in lines)


def _shown(*experiments: tuple[str, int, dict | None, str]) -> list[dict]:
    """`dvc exp show --json` as DVC 3 writes it: the workspace, then the baseline commit with its experiments."""
    def rev(name: str, seed: int, metrics: dict | None, group_by: str = "track_id") -> dict:
        data = {"params": {"params.yaml": {"data": {"split": {"seed": seed, "group_by": group_by}, "lr": 0.05}}},
                "metrics": {} if metrics is None else {"reports/metrics.json": {"data": metrics}}}
        return {"rev": f"{seed:07x}", "name": name, "data": data}

    return [{"rev": "workspace", "name": None, "data": {}, "experiments": None},
            {"rev": "0123abc", "name": "main", "data": {},
             "experiments": [{"revs": [rev(*experiment)]} for experiment in experiments]}]


def test_runs_are_found_by_name_and_keyed_by_grouping_and_split_seed():
    shown = _shown(("seeds-1-track-1", 2, _metrics(0.64, 0.63)), ("seeds-1-track-2", 3, _metrics(0.65, 0.66)),
                   ("seeds-1-artist-1", 2, _metrics(0.55, 0.56), "track_artist"),
                   ("seeds-10-1", 7, _metrics(0.5, 0.5)), ("other", 9, _metrics(0.5, 0.5)))
    protocols = named_runs(shown, ["seeds-1-track", "seeds-1-artist"])
    assert sorted(protocols) == ["track_artist", "track_id"]
    assert sorted(protocols["track_id"]) == [2, 3] and protocols["track_id"][3]["accuracy"] == 0.65
    assert protocols["track_artist"][2] == kept(_metrics(0.55, 0.56))
    assert "per_class" not in protocols["track_artist"][2] and "intervals" not in protocols["track_artist"][2]
    assert sorted(named_runs(_shown(("single", 5, _metrics(0.6, 0.6))), ["single"])["track_id"]) == [5]


@pytest.mark.parametrize(("shown", "expected"), [
    (_shown(("seeds-1-1", 2, None)), "experiment seeds-1-1: no reports/metrics.json, so it failed"),
    (_shown(("seeds-1-1", 2, _metrics(0.6, 0.6)), ("seeds-1-2", 2, _metrics(0.6, 0.6))),
     "split seed 2 appears twice for a split grouped by track"),
    (_shown(("other-1", 2, _metrics(0.6, 0.6))), "no experiment named 'seeds-1' or seeds-1-N"),
])
def test_a_failed_doubled_or_missing_run_is_one_clear_error(shown, expected):
    with pytest.raises(PipelineError, match=expected):
        named_runs(shown, ["seeds-1"])


def test_the_validation_table_reads_no_test_score():
    protocols = {"track_id": {2: _metrics(0.60, 0.61), 3: _metrics(0.64, 0.63)}}
    lines = validation_table({"dev-album": protocols})
    header, row = _cells(lines[2]), _cells(lines[4])
    assert header == ["experiments", "split", "seeds", "MLP, every song", "MLP, album has training songs",
                      "MLP, new album, known artist", "XGBoost, every song"]  # no slice without songs
    assert row == ["dev-album", "split grouped by track", "2, 3", "0.6300 / 0.6280", "0.8200 / 0.8100",
                   "0.6200 / 0.6100", "0.6210 / 0.6190"]
    # Scrambling every test figure leaves the table as it was.
    for run in protocols["track_id"].values():
        run["accuracy"] = run["f1_macro"] = -1.0
        for scores in [*run["baselines"].values(), *run["novelty"]["test"].values()]:
            scores["accuracy"] = -1.0
    assert validation_table({"dev-album": protocols}) == lines


def test_the_readme_headline_is_the_committed_report_runs():
    """The README's headline is headline_table of reports/seeds.json, which `make seeds` saves."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- headline:start -->")[1].split("<!-- headline:end -->")[0].strip()
    protocols = saved_runs(root / "reports" / "seeds.json")
    assert sorted(protocols) == ["track_artist", "track_id"] and all(len(runs) >= 5 for runs in protocols.values())
    assert block == "\n".join(headline_table(protocols))
