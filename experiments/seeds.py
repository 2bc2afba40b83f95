"""The MLP against its peers over several split seeds, each seed a full pipeline run (a DVC experiment that
`make seeds` queues), by how new a song is: the README's headline table and the per-seed tables behind it.

    python -m experiments.seeds --name seeds-20261207-0900-track --name seeds-20261207-0900-artist

Runs are told apart by their split's grouping (`split.group_by`): a split grouped by track measures catalogue
completion, where the test songs' albums and artists may have training songs (its novelty slices say which); one
grouped by artist measures new artists, every test song's artist being absent from training. A peer is compared
where every run has it; the one shown in the headline is the peer with the best mean validation accuracy over the
runs, chosen on validation like everything else. Over n seeds the MLP's and the peer's means and the mean paired
difference come with a 95% t-interval over the seeds (each seed's figure includes the noise of its own test
split and of the split itself); the verdict is "ahead" or "behind" only where that interval excludes 0, else
"level".
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from statistics import fmean, stdev

from scipy.stats import t as student_t

from spotify_genre.atomic import write_json
from spotify_genre.errors import PipelineError
from spotify_genre.preprocessing.novelty import DESCRIPTIONS, SLICES
from pipeline.tools import dvc_executable
from pipeline.report import MODEL_NAMES, markdown_table

METRICS = "reports/metrics.json"
SCORES = ("accuracy", "f1_macro")
PROTOCOLS = {"track_id": "split grouped by track", "track_artist": "split grouped by artist"}
# The headline's scenarios: (what a user labels, the protocol, the novelty slice or None for every test song).
SCENARIOS = (
    ("catalogue completion: the album has training songs", "track_id", "known_album"),
    ("new album of a known artist", "track_id", "new_album"),
    ("new artist", "track_artist", "new_artist"),
    ("every song of a split grouped by track", "track_id", None),
)


def _scores(metrics: dict, slice_name: str | None) -> dict | None:
    """The MLP's test scores and the baselines' (with the paired differences), of every song or one slice."""
    if slice_name is None:
        return metrics
    entry = (metrics.get("novelty") or {}).get("test", {}).get(slice_name)
    return entry if entry and entry.get("songs") else None


def mean_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of per-seed values and its t-interval over the seeds (no interval from one seed)."""
    mean = fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = student_t.ppf((1.0 + confidence) / 2.0, len(values) - 1) * stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def verdict(low: float, high: float) -> str:
    if math.isnan(low):
        return "one seed: no verdict"
    return "ahead" if low > 0 else "behind" if high < 0 else "level"


def peers(runs: dict[int, dict]) -> list[str]:
    """The peers every run has (the majority class is a floor, not a peer), best mean validation accuracy first."""
    metrics = list(runs.values())
    common = [name for name in MODEL_NAMES if name != "mlp" and all(name in run["baselines"] for run in metrics)]
    return sorted(common, key=lambda name: -fmean(run["baselines"][name]["val_accuracy"] for run in metrics))


def seeds_text(seeds: list[int]) -> str:
    """`101–105` for consecutive seeds, else `2, 3, 7`."""
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(str(seed) for seed in seeds)


def _text(mean: float, low: float, high: float, signed: bool = False) -> str:
    sign = "+" if signed else ""
    interval = "" if math.isnan(low) else f" [{low:{sign}.4f}, {high:{sign}.4f}]"
    return f"{mean:{sign}.4f}{interval}"


def summary(runs: dict[int, dict], slice_name: str | None, peer: str) -> dict | None:
    """Over the runs: the MLP's and the peer's mean accuracy and macro-F1 and the mean paired difference, each with
    its t-interval, and the songs per run; None where a run has no song in the slice."""
    found = [_scores(runs[seed], slice_name) for seed in sorted(runs)]
    if any(scores is None for scores in found):
        return None
    result: dict = {"songs": fmean(scores.get("songs", 0) for scores in found) if slice_name else None}
    for score in SCORES:
        result[f"mlp_{score}"] = mean_interval([scores[score] for scores in found])
        result[f"peer_{score}"] = mean_interval([scores["baselines"][peer][score] for scores in found])
        result[f"difference_{score}"] = mean_interval(
            [scores["baselines"][peer]["difference"][score]["estimate"] for scores in found])
    return result


def headline_table(protocols: dict[str, dict[int, dict]]) -> list[str]:
    """The README's results table: per scenario, how it was measured, the MLP's and the strongest peer's mean test
    accuracy over the seeds with intervals, the mean difference and the verdict."""
    rows = []
    for scenario, protocol, slice_name in SCENARIOS:
        runs = protocols.get(protocol)
        if not runs or not peers(runs):
            continue
        peer = peers(runs)[0]
        found = summary(runs, slice_name, peer)
        if found is None:
            continue
        where = (f"{PROTOCOLS[protocol]}, " + (f"this slice (about {found['songs']:,.0f} songs)" if slice_name
                                                else "every test song")
                 + f"; seeds {seeds_text(sorted(runs))}")
        difference = found["difference_accuracy"]
        rows.append([scenario, where, _text(*found["mlp_accuracy"]), f"{found['mlp_f1_macro'][0]:.4f}",
                     f"{MODEL_NAMES[peer]} {_text(*found['peer_accuracy'])}", _text(*difference, signed=True),
                     verdict(*difference[1:])])
    return markdown_table(["scenario", "measured on", "MLP test accuracy", "MLP macro-F1", "strongest peer",
                           "MLP − peer", "verdict"], rows)


def seed_tables(protocols: dict[str, dict[int, dict]]) -> list[str]:
    """Per protocol and per slice, each model's test accuracy / macro-F1 on each seed and their means, then the
    paired MLP − peer differences with each run's own 95% interval."""
    lines: list[str] = []
    for protocol, runs in protocols.items():
        seeds = sorted(runs)
        slices = [None, *(name for name in SLICES if all(_scores(runs[seed], name) for seed in seeds))]
        for slice_name in slices:
            found = [_scores(runs[seed], slice_name) for seed in seeds]
            title = "every test song" if slice_name is None else DESCRIPTIONS[slice_name]
            rows = [["MLP", *(" / ".join(f"{scores[score]:.4f}" for score in SCORES) for scores in found),
                     " / ".join(f"{fmean(scores[score] for scores in found):.4f}" for score in SCORES)]]
            differences = []
            for peer in peers(runs):
                values = [scores["baselines"][peer] for scores in found]
                rows.append([MODEL_NAMES[peer], *(" / ".join(f"{value[score]:.4f}" for score in SCORES)
                                                  for value in values),
                             " / ".join(f"{fmean(value[score] for value in values):.4f}" for score in SCORES)])
                differences.append([MODEL_NAMES[peer], *(
                    "; ".join(f"{value['difference'][score]['estimate']:+.4f} "
                              f"[{value['difference'][score]['low']:+.4f}, {value['difference'][score]['high']:+.4f}]"
                              for score in SCORES) for value in values)])
            lines += [f"{PROTOCOLS[protocol]}, {title}:", "",
                      *markdown_table(["test accuracy / macro-F1", *(f"seed {seed}" for seed in seeds), "mean"], rows),
                      "",
                      *markdown_table(["MLP − peer, paired 95% interval (accuracy; macro-F1)",
                                       *(f"seed {seed}" for seed in seeds)], differences), ""]
    return lines


def kept(metrics: dict) -> dict:
    """What the tables read of a run's reports/metrics.json: the test and validation scores, every peer's with its
    difference, and both splits' novelty slices."""
    return {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"],
            "val": {score: metrics["val"][score] for score in SCORES},
            "baselines": {name: {key: scores[key] for key in ("accuracy", "f1_macro", "val_accuracy", "val_f1_macro",
                                                               "difference")}
                          for name, scores in metrics["baselines"].items()},
            "novelty": {split: (metrics.get("novelty") or {}).get(split, {}) for split in ("test", "val")}}


def validation_table(configurations: dict[str, dict[str, dict[int, dict]]]) -> list[str]:
    """For choosing on development seeds without reading test: per experiment name, the mean over its seeds of the
    MLP's validation accuracy / macro-F1, of every song and per novelty slice, and each peer's of every song."""
    rows, header = [], None
    for name, protocols in configurations.items():
        for protocol, runs in protocols.items():
            metrics = [runs[seed] for seed in sorted(runs)]
            slices = [slice_name for slice_name in SLICES
                      if all(run["novelty"]["val"].get(slice_name, {}).get("songs") for run in metrics)]
            header = header or ["experiments", "split", "seeds", "MLP, every song",
                                *(f"MLP, {DESCRIPTIONS[slice_name]}" for slice_name in slices),
                                *(f"{MODEL_NAMES[peer]}, every song" for peer in peers(runs))]

            def mean(values: list[dict]) -> str:
                return " / ".join(f"{fmean(value[score] for value in values):.4f}" for score in SCORES)

            rows.append([name, PROTOCOLS[protocol], ", ".join(str(seed) for seed in sorted(runs)),
                         mean([run["val"] for run in metrics]),
                         *(mean([run["novelty"]["val"][slice_name] for run in metrics]) for slice_name in slices),
                         *(" / ".join(f"{fmean(run['baselines'][peer]['val_' + score] for run in metrics):.4f}"
                                      for score in SCORES) for peer in peers(runs))])
    return ["Validation accuracy / macro-F1, means over the seeds:", "", *markdown_table(header or [], rows)]


def saved_runs(path: Path) -> dict[str, dict[int, dict]]:
    """The runs as `--save` wrote them."""
    return {protocol: {int(seed): metrics for seed, metrics in runs.items()}
            for protocol, runs in json.loads(path.read_text()).items()}


def named_runs(shown: list[dict], names: list[str]) -> dict[str, dict[int, dict]]:
    """{split grouping: {split seed: metrics}} of the experiments called one of `names` or `name-N`, from
    `dvc exp show --json`."""
    protocols: dict[str, dict[int, dict]] = {}
    for name in names:
        count = 0
        for commit in shown:
            for experiment in commit.get("experiments") or []:
                for rev in experiment.get("revs") or []:
                    label = rev.get("name") or ""
                    if label != name and label.rpartition("-")[0] != name:
                        continue
                    data = rev.get("data") or {}
                    found = ((data.get("metrics") or {}).get(METRICS) or {}).get("data")
                    if not found:
                        raise PipelineError(f"experiment {label}: no {METRICS}, so it failed; "
                                            f"see `dvc queue logs {label}`")
                    split = data["params"]["params.yaml"]["data"]["split"]
                    runs = protocols.setdefault(split.get("group_by", "track_id"), {})
                    if split["seed"] in runs:
                        raise PipelineError(f"experiment {label}: split seed {split['seed']} appears twice "
                                            f"for a {PROTOCOLS.get(split.get('group_by'), 'split')}")
                    runs[split["seed"]] = kept(found)
                    count += 1
        if not count:
            raise PipelineError(f"no experiment named {name!r} or {name}-N in `dvc exp show`")
    return protocols


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.seeds",
        description="Print the MLP against its peers over the split seeds of `make seeds`, by how new a song is: "
                    "the README's headline table, then the per-seed tables.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--name", action="append",
                        help="the experiments' name, as `make seeds` queued them (once per protocol)")
    source.add_argument("--from", dest="saved", type=Path, metavar="FILE",
                        help="the runs a --save wrote (reports/seeds.json), instead of DVC's experiments")
    parser.add_argument("--save", type=Path, help="also write the runs' test metrics here, as JSON")
    parser.add_argument("--validation", action="store_true",
                        help="print only validation scores, one row per experiment name: for choosing on the "
                             "development seeds without reading their test split")
    parser.add_argument("--commits", type=int, default=20,
                        help="look for the experiments on this many commits back from HEAD (default 20)")
    args = parser.parse_args(argv)
    if args.saved is not None:
        if args.validation or args.save:
            parser.error("--from prints the saved runs' tables; --validation and --save need --name")
        try:
            protocols = saved_runs(args.saved)
        except (OSError, ValueError) as error:
            print(f"error: {args.saved}: cannot read the saved runs ({error})", file=sys.stderr)
            return 1
        print("\n".join([*headline_table(protocols), "", *seed_tables(protocols)]))
        return 0
    try:
        shown = json.loads(subprocess.run([dvc_executable(), "exp", "show", "--json", "-n", str(args.commits)],
                                          check=True, capture_output=True, text=True).stdout)
        if args.validation:
            print("\n".join(validation_table({name: named_runs(shown, [name]) for name in args.name})))
            return 0
        protocols = named_runs(shown, args.name)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.save:
        write_json(args.save, {protocol: {str(seed): runs[seed] for seed in sorted(runs)}
                               for protocol, runs in sorted(protocols.items())})
    print("\n".join([*headline_table(protocols), "", *seed_tables(protocols)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
