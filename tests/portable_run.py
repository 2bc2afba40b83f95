"""Run every stage of the pipeline, then `spotify-genre predict`, in one Python process, and print the sha256 of
each output as JSON, and that of one matrix product under the same pin: the same code `dvc repro` runs, without a
process (and its imports) per stage, so that it is affordable under CPU emulation
(`qemu-x86_64 -cpu Haswell python -m tests.portable_run ...`).

    python -m tests.portable_run PROJECT [--baselines DONE] [--out HASHES.json]

PROJECT holds a params.yaml (and whatever its data.source reads); the outputs land there as `dvc repro` would
put them. --baselines copies the baselines stage's outputs from the project DONE in place of running that stage
(scikit-learn's tree models crash under qemu-user; tests/test_portability.py shows their portability another
way), and fits the baselines that do run there (LightGBM, XGBoost) in process instead. Either way, "peers" in the
hashes fingerprints what the stage reports for those.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREDICT_OUTPUT = Path("reports/predict_raw.csv")
# Outputs of a run that are times, not results: outside Git and dvc.lock, and different every run.
NOT_RESULTS = ("reports/timing/",)
EMULATED_PEERS = ("lightgbm", "xgboost")  # the baselines that run under qemu-user


def stage_outputs() -> dict[str, list[str]]:
    """Each stage's declared outs, from the repository's dvc.yaml, in its order (the order the stages run in)."""
    import yaml

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: [next(iter(out)) if isinstance(out, dict) else out for out in stage.get("outs", [])]
            for name, stage in stages.items()}


def file_hashes(project: Path, paths: list[str]) -> dict[str, str]:
    """sha256 of every file at or below each path, keyed by its path relative to the project."""
    hashes = {}
    for path in paths:
        target = project / path
        files = sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target]
        for file in files:
            name = file.relative_to(project).as_posix()
            if not name.startswith(NOT_RESULTS):
                hashes[name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return hashes


def peer_fingerprints(report: dict, predictions: dict) -> dict[str, str]:
    """sha256 of the scores, rounds and test predictions the baselines stage reports for each EMULATED_PEERS."""
    import numpy as np

    return {name: hashlib.sha256(json.dumps(report["models"][name], sort_keys=True).encode()
                                 + np.asarray(predictions[name], dtype=np.int8).tobytes()).hexdigest()
            for name in EMULATED_PEERS if name in report["models"]}


def written_peers() -> dict[str, str]:
    from pipeline.artifacts import BASELINES, read_baseline_predictions

    return peer_fingerprints(json.loads(BASELINES.read_text()), read_baseline_predictions())


def fitted_peers() -> dict[str, str]:
    """EMULATED_PEERS fitted here, by the baselines stage's own code, on this project's processed splits."""
    from pipeline.artifacts import read_processed_splits
    from pipeline.params import load_params
    from stages.baselines import fit_baselines

    params = load_params().baselines
    peers = [name for name in params.models if name in EMULATED_PEERS]
    report, predictions, _ = fit_baselines(read_processed_splits(), params.model_copy(update={"models": peers}))
    return peer_fingerprints(report, predictions)


def matmul_digest() -> str:
    """sha256 of one float32 matrix product through torch (oneMKL): the product whose bytes differ between CPUs
    when nothing pins the code path (tests/test_portability.py's negative control)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(512, 300, generator=generator), torch.randn(300, 128, generator=generator)
    return hashlib.sha256((a @ b).numpy().tobytes()).hexdigest()


def run(project: Path, baselines: Path | None) -> dict[str, dict[str, str]]:
    """Run the stages in dvc.yaml's order in `project`, then predict on its raw songs; the hashes of each stage's outputs."""
    import importlib

    os.chdir(project)
    outputs = stage_outputs()
    hashes: dict[str, dict[str, str]] = {}
    for name in outputs:
        if name == "baselines" and baselines is not None:
            for path in outputs[name]:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(baselines / path, path)
            hashes["peers"] = fitted_peers()
            continue
        code = importlib.import_module(f"stages.{name}").main([])
        if code != 0:
            raise SystemExit(f"portable_run: stage {name} exited {code}")
        hashes[name] = file_hashes(project, outputs[name])
        if name == "baselines":
            hashes["peers"] = written_peers()
    from spotify_genre.predict.cli import main as predict

    code = predict(["data/raw/spotify_songs.csv", "-o", PREDICT_OUTPUT.as_posix(), "--top-k", "3"])
    if code != 0:
        raise SystemExit(f"portable_run: predict exited {code}")
    hashes["predict"] = file_hashes(project, [PREDICT_OUTPUT.as_posix()])
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.portable_run",
                                     description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("project", type=Path)
    parser.add_argument("--baselines", type=Path, help="a project whose baselines outputs to use instead of running "
                                                       "that stage")
    parser.add_argument("--out", type=Path, help="write the hashes here as well as to stdout")
    args = parser.parse_args(argv)
    baselines = args.baselines.resolve() if args.baselines else None
    out = args.out.resolve() if args.out else None
    sys.path.insert(0, str(ROOT))
    import stages  # noqa: F401  (the numerics pin, before the stages import numpy and torch)
    from spotify_genre.numerics import in_effect

    hashes = run(args.project.resolve(), baselines)
    report = {"numerics": in_effect(), "hashes": hashes, "matmul": matmul_digest()}
    text = json.dumps(report, indent=2, sort_keys=True)
    if out is not None:
        out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
