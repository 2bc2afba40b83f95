"""reports/bench.md from reports/bench.json: the project's speed and memory goals first, then each section's figures,
readable on its own and ending with when, by which command, on which machine and at which commit it was measured
(sections are re-measured one at a time, so they need not share a run)."""

from __future__ import annotations

from bench.figures import at_most, fig, mib, number, rate
from bench.peers import peers_markdown, peers_targets
from bench.prediction import catalogue_markdown, catalogue_targets
from bench.serving import serving_markdown, serving_targets
from bench.tuning import tuning_markdown, tuning_targets


def _machine_line(machine: dict) -> str:
    v = machine.get("versions", {})
    load = machine.get("load_average_at_start")
    names = {"torch": "torch", "dvc": "DVC", "dvclive": "DVCLive", "pandas": "pandas", "scikit-learn": "scikit-learn"}
    versions = ", ".join(f"{shown} {v[key]}" for key, shown in names.items() if v.get(key))
    parts = [f"{machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory_gib')} GiB RAM, "
             f"{machine.get('os')}", f"Python {machine.get('python')}, {versions}"]
    if machine.get("gpu"):
        parts.append(f"GPU {machine['gpu']}")
    if load:
        parts.append(f"load average {load[0]:g} at the start")
    if machine.get("commit"):
        parts.append(f"commit {machine['commit']}")
    return "; ".join(parts)


def _header(document: dict) -> list[str]:
    sections = document["sections"]
    first = next(iter(sections.values()))
    runs = sorted({entry["runs"] for entry in sections.values()})
    quick = any(entry.get("quick") for entry in sections.values())
    dates = sorted(entry["measured_at"][:10] for entry in sections.values() if entry.get("measured_at"))
    runs_of_bench = {(entry.get("command"), entry.get("machine", {}).get("commit")) for entry in sections.values()}
    when = dates[0] if dates[0] == dates[-1] else f"between {dates[0]} and {dates[-1]}"
    lines = [
        f"Written by `python -m bench` (`make bench`) from the bench.json beside it. The sections were measured {when}"
        + (", in one run." if len(runs_of_bench) == 1 else
           ", not all in one run (`--only SECTION` re-measures one section and keeps the others' figures)."),
        "Each section ends with the date, command, machine and commit it was measured on; the goals' table names the "
        "section of each row.",
        "",
        f"Each figure is the median of {' or '.join(map(str, runs))} runs, with the range (min–max) in brackets; "
        f"data: {first['dataset']}. Timings depend on the machine and on what else it is running: "
        "re-run `make bench` to measure yours.",
    ]
    if quick:
        lines += ["", "**Quick run** (`--quick`: one run each, smaller sizes): for trying the harness, not for "
                      "comparison."]
    return lines


def _targets(sections: dict) -> list[str]:
    rows, bounds, origin = [], [], []

    def measured_in(name: str) -> None:
        origin.extend([name] * (len(rows) - len(origin)))

    pipeline = sections.get("pipeline", {}).get("results")
    if pipeline:
        repro, noop, exp = pipeline["repro"], pipeline["noop"], pipeline["exp_run"]
        targets = pipeline["targets"]
        stages = repro["stages"]
        rows.append(("`dvc repro` from raw data (download excluded), default params", fig(repro["seconds"]),
                     f"≤ {targets['repro_s']:g} s", at_most(repro["seconds"]["median"], targets["repro_s"])))
        rows.append(("`dvc exp run -S lr=…` (runs train and evaluate)", fig(exp["seconds"]),
                     f"≤ {targets['exp_run_s']:g} s", at_most(exp["seconds"]["median"], targets["exp_run_s"])))
        if "repro_after_lr_edit" in pipeline:
            rows.append(("for comparison: lr edited in params.yaml, then `dvc repro` (the same stages)",
                         fig(pipeline["repro_after_lr_edit"]["seconds"]), "", ""))
        overhead = pipeline.get("overhead_targets")
        if not overhead:
            rows.append(("no-op `dvc repro`", fig(noop["seconds"]), f"≤ {targets['noop_s']:g} s",
                         at_most(noop["seconds"]["median"], targets["noop_s"])))
        if overhead and "outside_fit_s" in repro and "outside_fit_s" in exp:
            rows.append(("`dvc repro` from raw data, outside the training loop (wall − train's `fit_seconds`)",
                         fig(repro["outside_fit_s"]), f"≤ {overhead['repro_outside_fit_s']:g} s",
                         at_most(repro["outside_fit_s"]["median"], overhead["repro_outside_fit_s"])))
            rows.append(("`dvc exp run -S lr=…`, outside the training loop (wall − train's `fit_seconds`)",
                         fig(exp["outside_fit_s"]), f"≤ {overhead['exp_run_outside_fit_s']:g} s",
                         at_most(exp["outside_fit_s"]["median"], overhead["exp_run_outside_fit_s"])))
            rows.append(("no-op `dvc repro`", fig(noop["seconds"]), f"≤ {overhead['noop_s']:g} s",
                         at_most(noop["seconds"]["median"], overhead["noop_s"])))
        if "fit_s" in repro:
            target = pipeline["fit_target_s"]
            rows.append(("train stage's fit (`fit_seconds`), default params, numerics pinned", fig(repro["fit_s"]),
                         f"≤ {target:g} s", at_most(repro["fit_s"]["median"], target)))
        alone = sum(s["alone_s"]["median"] for s in stages.values())
        imports = sum(s["import_s"]["median"] for s in stages.values())
        heaviest = sorted(stages, key=lambda name: -stages[name]["alone_s"]["median"])[:2]
        if repro["seconds"]["median"] > targets["repro_s"]:
            share = repro["seconds"]["median"] - alone
            dvc_share = (f"DVC adds {number(share, ' s')}" if share >= 0.5 else
                         "DVC adds nothing measurable beyond them (the difference is within run-to-run noise)")
            bounds.append(
                f"`dvc repro`: the stage commands, each run alone, take {number(alone, ' s')} ("
                + ", ".join(f"{name} {number(stages[name]['alone_s']['median'], ' s')}" for name in heaviest)
                + f"), of which {number(imports, ' s')} is Python start-up and importing the stage modules; "
                f"{dvc_share}; {number(repro['dvc_outside_stages_s']['median'], ' s')} of the run is outside any "
                "stage (DVC's start-up, reading the pipeline, checking the raw data).")
        if exp["seconds"]["median"] > targets["exp_run_s"]:
            train, evaluate = stages["train"], stages["evaluate"]
            edited = pipeline.get("repro_after_lr_edit", {}).get("seconds")
            bounds.append(
                f"`dvc exp run`: its two stages, each run alone, take "
                f"{number(train['alone_s']['median'] + evaluate['alone_s']['median'], ' s')} (train "
                f"{number(train['alone_s']['median'], ' s')}, evaluate {number(evaluate['alone_s']['median'], ' s')}; "
                f"their imports {number(train['import_s']['median'] + evaluate['import_s']['median'], ' s')})"
                + (f"; the same change made by editing lr in params.yaml and running `dvc repro` takes "
                   f"{number(edited['median'], ' s')}, so the experiment's own bookkeeping costs "
                   f"{number(exp['seconds']['median'] - edited['median'], ' s')}." if edited else "."))
        if overhead and "outside_fit_s" in repro and "outside_fit_s" in exp:
            fit = repro["seconds"]["median"] - repro["outside_fit_s"]["median"]
            train_rest = stages["train"]["alone_s"]["median"] - fit
            others = sum(stages[name]["in_repro_s"]["median"] for name in stages if name not in ("train", "baselines"))
            if repro["outside_fit_s"]["median"] > overhead["repro_outside_fit_s"]:
                bounds.append(
                    f"`dvc repro` outside the training loop ({number(repro['outside_fit_s']['median'], ' s')}): the "
                    f"baselines stage, which fits HistGradientBoosting, LightGBM and XGBoost, "
                    f"{number(stages['baselines']['in_repro_s']['median'], ' s')}; the train stage around its loop "
                    f"(start-up, torch's optimiser importing its compiler stack, reading, DVCLive, the bundle) about "
                    f"{number(train_rest, ' s')}; the other stages {number(others, ' s')}; DVC outside the stages "
                    f"{number(repro['dvc_outside_stages_s']['median'], ' s')}.")
            if exp["outside_fit_s"]["median"] > overhead["exp_run_outside_fit_s"]:
                evaluate = stages["evaluate"]["alone_s"]["median"]
                bookkeeping = exp["outside_fit_s"]["median"] - train_rest - evaluate
                floor = exp.get("floor")
                bounds.append(
                    f"`dvc exp run` outside the training loop ({number(exp['outside_fit_s']['median'], ' s')}): "
                    f"the train stage around its loop about {number(train_rest, ' s')} (its imports alone "
                    f"{number(stages['train']['import_s']['median'], ' s')}), the evaluate stage "
                    f"{number(evaluate, ' s')}, and DVC (the experiment's Git bookkeeping and hashing) the remaining "
                    f"{number(bookkeeping, ' s')}."
                    + (f" The floor: the same command in a project of the same two stages that only import torch "
                       f"and numpy takes {number(floor['dvc_torch_numpy_s']['median'], ' s')} "
                       f"({number(floor['dvc_s']['median'], ' s')} of it DVC's, with stages that only start "
                       "Python), before any data is read, any metric computed or anything tracked." if floor else ""))
        if noop["seconds"]["median"] > targets["noop_s"]:
            bounds.append(f"no-op `dvc repro`: DVC's start-up alone (`dvc --version`) takes "
                          f"{number(pipeline['startup']['dvc_version_s']['median'], ' s')}; the rest is DVC reading "
                          "dvc.yaml and dvc.lock and checking every dependency's hash.")
    measured_in("pipeline")
    peers = sections.get("peers", {}).get("results")
    if peers:
        rows += peers_targets(peers)
    measured_in("peers")
    training = sections.get("training", {}).get("results")
    if training:
        ratio = training["ratio"]
        verdict = "met" if ratio["median"] >= training["target_ratio"] else (
            f"**missed** by {training['target_ratio'] - ratio['median']:.2f}×")
        rows.append(("train stage's loop vs a plain `DataLoader(TensorDataset)` loop", f"{fig(ratio, '×')} faster",
                     f"≥ {training['target_ratio']:g}×", verdict))
        if ratio["median"] < training["target_ratio"] and "compute_only_samples_per_s" in training:
            stage = training["stage_loop_samples_per_s"]["median"]
            plain = training["dataloader_samples_per_s"]["median"]
            bound = training["compute_only_samples_per_s"]["median"]
            bounds.append(
                f"training loop: the model's own forward, backward and step (one batch reused, no data handling) run "
                f"at {bound:,.0f} samples/s, so no loop can beat the DataLoader's {plain:,.0f} by more than "
                f"{bound / plain:.2f}×; the train stage's loop reaches {stage / bound:.0%} of that bound. "
                "Compute bounds it: the DataLoader's per-row indexing and collation cost about "
                f"{(1 / plain - 1 / bound) * 1e6:.1f} µs a sample, the model {1e6 / bound:.1f} µs.")
    measured_in("training")
    numerics = sections.get("numerics", {}).get("results")
    if numerics:
        rows.append(("train stage's loop with the numerics pin (same bytes on every x86-64 CPU)",
                     f"{rate(numerics['pinned_samples_per_s'])}; unpinned {rate(numerics['native_samples_per_s'])}",
                     "", f"the pin costs {fig(numerics['slowdown'], '×')}"))
    measured_in("numerics")
    scaling = sections.get("scaling", {}).get("results")
    if scaling:
        largest = scaling["sizes"][-1]
        peaks = {name: v["peak_rss_gib_at_largest"] for name, v in scaling["stages"].items()}
        worst = max(peaks, key=peaks.get)
        target = scaling["target_peak_gib"]
        rows.append((f"peak memory at {largest['rows']:,} rows (largest: {worst})", f"{peaks[worst]:.2f} GiB",
                     f"≤ {target:g} GiB", at_most(peaks[worst], target, " GiB")))
        if len(scaling["sizes"]) >= 2:
            small = scaling["sizes"][-2]
            growth = {name: v["growth_per_step"][-1] for name, v in scaling["stages"].items()}
            fastest = max(growth, key=growth.get)
            tolerance = scaling["growth_tolerance"]
            verdict = ("met" if growth[fastest] <= 1.0 else
                       f"met, within noise (≤ {tolerance:g})" if growth[fastest] <= tolerance else
                       f"**missed**: {growth[fastest]:.2f}× the row growth")
            rows.append((f"time growth, {small['rows']:,} → {largest['rows']:,} rows (fastest-growing: {fastest})",
                         f"{growth[fastest]:.2f}× the row growth", "≤ 1×", verdict))
            over = [name for name, value in peaks.items() if value > target]
            if over:
                bounds.append("memory: " + ", ".join(f"{name} {peaks[name]:.2f} GiB" for name in over)
                              + f" at {largest['rows']:,} rows (see the scaling table).")
    measured_in("scaling")
    predict = sections.get("predict", {}).get("results")
    if predict:
        seconds = predict["end_to_end_s"]["median"]
        rows.append((f"`spotify-genre predict`, {predict['rows']:,} rows, end to end",
                     f"{fig(predict['end_to_end_s'])}, {predict['end_to_end_rows_per_s']['median']:,.0f} rows/s",
                     f"a few seconds (≤ {predict['target_s']:g} s)", at_most(seconds, predict["target_s"])))
        if seconds > predict["target_s"]:
            work, imports = predict["in_process_s"]["median"], predict["import_s"]["median"]
            bounds.append(f"predict: of the {number(seconds, ' s')} end to end, Python's start-up and the imports "
                          f"(torch, pandas) take {number(imports, ' s')} and the work itself, in a warm process, "
                          f"{number(work, ' s')}; the remaining {number(seconds - imports - work, ' s')} is what a "
                          "first call costs beyond a warm one, and the process's exit.")
        small = predict.get("small")
        if small:
            rows.append((f"`spotify-genre predict`, {small['rows']} rows, end to end", fig(small["end_to_end_s"]),
                         f"≤ {small['target_s']:g} s", at_most(small["end_to_end_s"]["median"], small["target_s"])))
    measured_in("predict")
    catalogue = sections.get("catalogue", {}).get("results")
    if catalogue:
        rows += catalogue_targets(catalogue)
    measured_in("catalogue")
    serving = sections.get("serving", {}).get("results")
    if serving:
        rows += serving_targets(serving)
        one = serving["one_song"]
        if one["p99_ms"]["median"] > serving["targets"]["p99_ms"]:
            load = sections["serving"]["machine"].get("load_average_at_start") or ["?"]
            bounds.append(f"serving: one song a request, the median request takes "
                          f"{_num(one['p50_ms']['median'], ' ms')} and the slowest 1% "
                          f"{_num(one['p99_ms']['median'], ' ms')}: a worker preprocesses the "
                          "requests waiting together, then runs the model on each alone, on one thread, while the "
                          f"clients share the same 2 cores (load average {load[0]:g} at the start).")
    measured_in("serving")
    tuning = sections.get("tuning", {}).get("results")
    if tuning:
        rows += tuning_targets(tuning)
    measured_in("tuning")
    if not rows:
        return []
    lines = ["**Goals**: the project's own speed and memory goals, for a 2-core CPU; each row comes from the section "
             "named, measured on the date given (its section says on what machine and commit).", "",
             "| measurement | measured | goal | verdict | section, date |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} | {name}, {sections[name]['measured_at'][:10]} |"
              for (a, b, c, d), name in zip(rows, origin)]
    if bounds:
        lines += ["", "What bounds the missed goals (measured):", ""] + [f"- {line}" for line in bounds]
    return lines


def _pipeline(results: dict) -> list[str]:
    repro = results["repro"]
    lines = ["**Pipeline stages** (`dvc repro`, real data): each stage's span inside `dvc repro` (from DVC's "
             "\"Running stage\" line to the next line DVC writes after the command), the same command run alone "
             "without DVC, the import of its module alone (Python start-up included), and its peak memory.", "",
             "| stage | in `dvc repro` | command alone | module import | peak RSS |", "| --- | --- | --- | --- | --- |"]
    for name, stage in repro["stages"].items():
        lines.append(f"| {name} | {fig(stage['in_repro_s'])} | {fig(stage['alone_s'])} | {fig(stage['import_s'])} "
                     f"| {mib(stage['peak_rss_mib'])} |")
    lines.append(f"| DVC outside the stages | {fig(repro['dvc_outside_stages_s'])} | | | |")
    lines.append(f"| **total** | **{fig(repro['seconds'])}** | | | |")
    epochs = [e for e in repro.get("train_epochs", []) if e]
    exp = results["exp_run"]
    startup = results["startup"]
    lrs = ", ".join(f"{lr:g}" for lr in exp["lr_values"])
    lines += ["", f"Command: `{repro['command']}` ({repro['what']})"
              + (f"; the train stage ran {', '.join(map(str, epochs))} epochs." if epochs else ".")
              + f" `dvc exp run -S lr=…` used lr = {lrs} (a new value each time, so no run-cache hit) and ran "
              f"{' and '.join(exp['stages_run'])}. Start-up: Python {fig(startup['python_s'])}, `dvc --version` "
              f"{fig(startup['dvc_version_s'])}."]
    if "parts_s" in exp:
        lines += ["", "**`dvc exp run -S lr=…`, part by part** (each a median over the runs; the stages time their "
                  "own steps in reports/timing/, DVC's share is what is left):", "",
                  "| part | seconds |", "| --- | --- |"]
        lines += [f"| {EXP_PARTS.get(name, name)} | {fig(value)} |" for name, value in exp["parts_s"].items()]
    if "floor" in exp:
        floor = exp["floor"]
        lines += ["", f"**The loop's floor**: {floor['what']}; no project code runs.", "",
                  "| `dvc exp run -S lr=…` in a project of the same shape | seconds |", "| --- | --- |",
                  f"| stages that only start Python: DVC's own share | {fig(floor['dvc_s'])} |",
                  f"| stages that only import torch (train) and numpy (evaluate) | {fig(floor['dvc_torch_numpy_s'])} |"]
    return lines


EXP_PARTS = {
    "dvc_outside_stages_s": "DVC outside the stages (experiment bookkeeping, reading dvc.yaml and dvc.lock, the "
                            "lock file)",
    "train_startup_s": "train: start-up and imports (torch)",
    "train_fit_s": "train: the fit (`fit_seconds`)",
    "train_predictions_s": "train: val and test probabilities for evaluate",
    "train_dvclive_s": "train: DVCLive",
    "train_rest_of_main_s": "train: the rest of main() (reading, torch set-up and optimiser imports, the bundle)",
    "train_exit_and_dvc_s": "train: process exit and DVC's work on its outputs",
    "evaluate_startup_s": "evaluate: start-up and imports (pandas, matplotlib)",
    "evaluate_metrics_s": "evaluate: metrics and bootstrap intervals",
    "evaluate_figures_s": "evaluate: the PNG figures",
    "evaluate_rest_of_main_s": "evaluate: the rest of main() (reading, predictions.csv, model card)",
    "evaluate_exit_and_dvc_s": "evaluate: process exit and DVC's work on its outputs",
}


def _training(results: dict) -> list[str]:
    return [
        f"**Training throughput** ({results['rows']:,} training rows, {results['features']} inputs, MLP "
        f"{results['hidden_sizes']}, batch {results['batch_size']}, {results['threads']} CPU thread(s), "
        f"{results['epochs_per_run']} epochs a run, both loops in one process, alternating):", "",
        "| loop | samples/s |", "| --- | --- |",
        f"| train stage (`pipeline.mlp_fitting.fit`: tensors in memory, batches by index) | "
        f"{rate(results['stage_loop_samples_per_s'])} |",
        f"| plain `DataLoader(TensorDataset)`, shuffled | {rate(results['dataloader_samples_per_s'])} |",
        *([f"| compute only: the same steps on one batch, no data handling (the bound) | "
           f"{rate(results['compute_only_samples_per_s'])} |"] if "compute_only_samples_per_s" in results else []),
        f"| ratio train stage / DataLoader (per pair of runs) | {fig(results['ratio'], '×')} |",
    ]


def _numerics(results: dict) -> list[str]:
    pinned, native = results["numerics"]["portable"], results["numerics"]["native"]

    def paths(state: dict) -> str:
        return f"oneMKL {state.get('mkl_cbwr')}, ATen {state.get('aten')}, numpy {state.get('numpy')}"

    return [
        f"**Numerics pin** (the train stage's loop and model, {results['rows']:,} training rows, "
        f"{results['features']} inputs, {results['epochs_per_run']} epochs a run, a fresh process per run, "
        "alternating):", "",
        "| numerics | code paths | samples/s |", "| --- | --- | --- |",
        f"| pinned (default; `spotify_genre/numerics.py`) | {paths(pinned)} | {rate(results['pinned_samples_per_s'])} |",
        f"| unpinned (`SPOTIFY_GENRE_NUMERICS=native`) | {paths(native)} | {rate(results['native_samples_per_s'])} |",
        f"| unpinned / pinned (per pair of runs) | | {fig(results['slowdown'], '×')} |",
    ]


def _scaling(results: dict) -> list[str]:
    sizes = results["sizes"]
    head = " | ".join(f"{size['rows']:,} rows ({size['factor']:g}×)" for size in sizes)
    growth_head = " | ".join(f"growth {a['factor']:g}× → {b['factor']:g}×" for a, b in zip(sizes, sizes[1:]))
    lines = [f"**Scaling** (synthetic songs; each stage a fresh `python -m stages.<name>`; training capped at "
             f"{results['train_epochs']} epochs at every size; the baselines fit on at most their "
             "`baselines.max_train_rows`). Wall time, then peak RSS; growth is the time ratio divided by the row "
             "ratio (1 = linear):", "",
             f"| stage | {head} | {growth_head} |", "| --- |" + " --- |" * (len(sizes) * 2 - 1)]
    for name, verdict in results["stages"].items():
        cells = " | ".join(f"{fig(size['stages'][name]['seconds'])}, {mib(size['stages'][name]['peak_rss_mib'])}"
                           for size in sizes)
        growth = " | ".join(f"{value:.2f}" for value in verdict["growth_per_step"])
        lines.append(f"| {name} | {cells} | {growth} |")
    totals = " | ".join(f"{number(size['total_s'], ' s')}" for size in sizes)
    total_growth = " | ".join(f"{(b['total_s'] / a['total_s']) / (b['rows'] / a['rows']):.2f}"
                              for a, b in zip(sizes, sizes[1:]))
    lines.append(f"| **all stages** | {totals} | {total_growth} |")
    return lines


def _predict(results: dict) -> list[str]:
    return [
        f"**Predict** (`{results['command']}`, {results['rows']:,} songs, {results['input_mib']} MiB of CSV):", "",
        "| measured | time | rows/s |", "| --- | --- | --- |",
        f"| end to end (a fresh process) | {fig(results['end_to_end_s'])} | "
        f"{rate(results['end_to_end_rows_per_s'], '')} |",
        f"| in process (start-up and imports excluded) | {fig(results['in_process_s'])} | "
        f"{rate(results['in_process_rows_per_s'], '')} |",
        f"| start-up: `import spotify_genre.predict.cli, spotify_genre.model` | {fig(results['import_s'])} | |",
        "", f"Peak memory end to end: {mib(results['peak_rss_mib'])}.",
    ]


def _cuda(results: dict) -> list[str]:
    if "skipped" in results:
        return [f"**CPU against GPU**: skipped ({results['skipped']}). On a machine with a GPU: "
                "`python -m bench --only cuda` (needs neither DVC nor DVCLive)."]
    lines = [f"**CPU against GPU** (`pipeline.mlp_fitting.fit`, default params with early stopping, "
             f"{results['rows']:,} training rows, batch {results['batch_size']}; CPU on {results['cpu_threads']} thread(s); GPU "
             f"{results['gpu']}, torch {results['torch']}):", "",
             "| device | samples/s | time to the best epoch | whole fit | epochs (best) |",
             "| --- | --- | --- | --- | --- |"]
    for name, device in results["devices"].items():
        epochs = ", ".join(f"{e} ({b})" for e, b in zip(device["epochs"], device["best_epoch"]))
        lines.append(f"| {name} | {rate(device['samples_per_s'])} | {fig(device['to_best_epoch_s'])} | "
                     f"{fig(device['fit_s'])} | {epochs} |")
    sweep = results.get("batch_sweep")
    if sweep:
        batches = list(next(iter(sweep["samples_per_s"].values())))
        lines += ["", f"Training throughput alone by batch size (samples/s, {sweep['epochs']} epochs, same model "
                      "and data):", "",
                  "| device | " + " | ".join(f"batch {int(b):,}" for b in batches) + " |",
                  "| --- |" + " --- |" * len(batches)]
        for name, by_batch in sweep["samples_per_s"].items():
            lines.append(f"| {name} | " + " | ".join(rate(by_batch[b], '') for b in batches) + " |")
        by_device = sweep["samples_per_s"]
        if {"cpu", "cuda"} <= set(by_device):
            lines += ["", "GPU over CPU: " + ", ".join(
                f"{by_device['cuda'][b]['median'] / by_device['cpu'][b]['median']:.2g}× at batch {int(b):,}"
                for b in batches) + "."]
    return lines


def _pipeline_beside(results: dict, before: dict) -> list[str]:
    """The pipeline's loops beside the same figures of an earlier measurement (`--before`)."""
    def loops(r: dict) -> dict[str, dict | None]:
        repro, exp, stages = r["repro"], r["exp_run"], r["repro"]["stages"]
        return {
            "`dvc repro` from raw data": repro["seconds"],
            "… of which the baselines stage": stages.get("baselines", {}).get("in_repro_s"),
            "… of which the train stage": stages.get("train", {}).get("in_repro_s"),
            "… of which train's fit": repro.get("fit_s"),
            "`dvc exp run -S lr=…`": exp["seconds"],
            "… outside the fit": exp.get("outside_fit_s"),
            "no-op `dvc repro`": r["noop"]["seconds"],
        }

    now, then = loops(results), loops(before["results"])
    lines = ["", f"Beside the figures measured {str(before.get('measured_at'))[:10]} at commit "
                 f"{before.get('commit') or 'not recorded'} on {before.get('cpu') or 'an unrecorded CPU'} (medians):",
             "", "| loop | before | now | before / now |", "| --- | --- | --- | --- |"]
    for name, stats in now.items():
        earlier = then.get(name)
        if stats is None or earlier is None:
            continue
        lines.append(f"| {name} | {number(earlier['median'], ' s')} | {number(stats['median'], ' s')} | "
                     f"{earlier['median'] / stats['median']:.1f}× |")
    return lines


BESIDE = {"pipeline": _pipeline_beside}

RENDER = {"pipeline": _pipeline, "peers": peers_markdown, "training": _training, "numerics": _numerics,
          "scaling": _scaling, "predict": _predict, "catalogue": catalogue_markdown, "serving": serving_markdown,
          "tuning": tuning_markdown, "cuda": _cuda}


def markdown(document: dict) -> str:
    sections = document["sections"]
    lines = _header(document)
    targets = _targets(sections)
    if targets:
        lines += [""] + targets
    for name, render in RENDER.items():
        entry = sections.get(name)
        if entry is None:
            continue
        lines.append("")
        if "error" in entry:
            lines.append(f"**{name}**: failed: {entry['error']}")
            continue
        lines += render(entry["results"])
        if entry.get("before") and name in BESIDE:
            lines += BESIDE[name](entry["results"], entry["before"])
        commit = "" if entry["machine"].get("commit") else "; commit not recorded"
        lines += ["", f"({name}: measured {entry['measured_at']} by `{entry['command']}` on "
                      f"{_machine_line(entry['machine'])}{commit}{', quick run' if entry.get('quick') else ''}.)"]
    return "\n".join(lines) + "\n"
