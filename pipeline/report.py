"""What the evaluate stage shows a reader: the model card, the plot data and the PNG figures.

Figures are drawn on matplotlib's Agg canvas without pyplot (no global state, no display) and saved with no
metadata that varies, so the same data always gives the same bytes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spotify_genre.atomic import write_with
from spotify_genre.preprocessing.novelty import DESCRIPTIONS, SLICES

FIGURE_DPI = 100
# Matplotlib writes its version as "Software"; PNGs carry no date, so this keeps the bytes stable.
PNG_METADATA = {"Software": None}


def per_class_f1_csv(per_class: dict[str, dict[str, Any]]) -> str:
    frame = pd.DataFrame({"genre": list(per_class), "f1": [values["f1"] for values in per_class.values()]})
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.6f")


MODEL_NAMES = {"mlp": "MLP", "hist_gradient_boosting": "HistGradientBoosting", "random_forest": "RandomForest",
               "lightgbm": "LightGBM", "xgboost": "XGBoost"}  # the majority class is a floor, not a model to compare


def novelty_scores(slices: dict[str, dict]) -> list[dict[str, Any]]:
    """One record per (slice, model) of the slices that have songs: the MLP's, then every peer's test scores."""
    records = []
    for name in SLICES:
        entry = slices[name]
        if not entry["songs"]:
            continue
        models = {"mlp": entry, **{peer: scores for peer, scores in entry.get("baselines", {}).items()
                                   if peer in MODEL_NAMES}}
        records += [{"slice": name, "model": MODEL_NAMES[model], "bar": f"{DESCRIPTIONS[name]} · {MODEL_NAMES[model]}",
                     "songs": entry["songs"], "accuracy": scores["accuracy"], "f1_macro": scores["f1_macro"]}
                    for model, scores in models.items()]
    return records


def novelty_csv(slices: dict[str, dict]) -> str:
    """The DVC plot's data: test accuracy and macro-F1 per novelty slice and model."""
    frame = pd.DataFrame(novelty_scores(slices), columns=["bar", "slice", "model", "songs", "accuracy", "f1_macro"])
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.6f")


def novelty_figure(slices: dict[str, dict]) -> Figure:
    """Test accuracy per novelty slice, one bar per model, the MLP's 95% interval drawn on its bar."""
    records = novelty_scores(slices)
    names = [name for name in SLICES if slices[name]["songs"]]
    models = list(dict.fromkeys(record["model"] for record in records))
    width = 0.8 / max(len(models), 1)
    figure = Figure(figsize=(7.5, 4.2))
    axes = figure.add_subplot()
    for offset, model in enumerate(models):
        values = {record["slice"]: record["accuracy"] for record in records if record["model"] == model}
        positions = [index + (offset - (len(models) - 1) / 2) * width for index, name in enumerate(names)
                     if name in values]
        heights = [values[name] for name in names if name in values]
        if model == "MLP":
            low = [values[name] - slices[name]["intervals"]["accuracy"]["low"] for name in names]
            high = [slices[name]["intervals"]["accuracy"]["high"] - values[name] for name in names]
            axes.bar(positions, heights, width, label=model, yerr=[low, high], capsize=3)
        else:
            axes.bar(positions, heights, width, label=model)
    axes.set_xticks(range(len(names)),
                    labels=[f"{DESCRIPTIONS[name]}\n({slices[name]['songs']:,} songs)" for name in names])
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0.0, 1.0)
    axes.set_title("Test accuracy by how new the song is to the model")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper right")
    figure.tight_layout()
    return figure


def save_png(path, figure: Figure) -> None:
    FigureCanvasAgg(figure)
    write_with(path, lambda tmp: figure.savefig(tmp, format="png", dpi=FIGURE_DPI, metadata=PNG_METADATA))


def loss_figure(train: pd.DataFrame, val: pd.DataFrame, best_epoch: int | None = None) -> Figure:
    """Train and validation loss by epoch (DVCLive's `step` column), the epoch whose weights were kept marked."""
    figure = Figure(figsize=(7, 4.2))
    axes = figure.add_subplot()
    axes.plot(train["step"], train["loss"], marker=".", label="train")
    axes.plot(val["step"], val["loss"], marker=".", label="validation")
    if best_epoch is not None:
        axes.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
    axes.set_xlabel("epoch")
    axes.set_ylabel("cross-entropy loss")
    axes.set_title("Training and validation loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure


def confusion_figure(normalised: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix: each row shows where one actual genre's songs went."""
    n = len(class_names)
    figure = Figure(figsize=(6.4, 5.6))
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    for row in range(n):
        for column in range(n):
            value = normalised[row, column]
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=9,
                      color="white" if value > 0.5 else "black")
    axes.set_xticks(range(n), labels=class_names)
    axes.set_yticks(range(n), labels=class_names)
    axes.set_xlabel("predicted genre")
    axes.set_ylabel("actual genre")
    axes.set_title("Confusion matrix, test split (each row sums to 1)")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return figure


def write_loss_png(path, train: pd.DataFrame, val: pd.DataFrame, best_epoch: int | None = None) -> None:
    save_png(path, loss_figure(train, val, best_epoch))


def write_confusion_png(path, normalised: np.ndarray, class_names: Sequence[str]) -> None:
    save_png(path, confusion_figure(normalised, class_names))


def write_novelty_png(path, slices: dict[str, dict]) -> None:
    save_png(path, novelty_figure(slices))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_number(cell) for cell in row) + " |" for row in rows]
    return lines


_BASELINE_NAMES = {
    "majority": "majority class",
    "hist_gradient_boosting": "HistGradientBoosting (scikit-learn)",
    "random_forest": "RandomForest (scikit-learn)",
    "lightgbm": "LightGBM",
    "xgboost": "XGBoost",
}


def interval_text(values: dict[str, float], signed: bool = False) -> str:
    """`[low, high]` to 4 decimals, with a sign for a difference."""
    sign = "+" if signed else ""
    return f"[{values['low']:{sign}.4f}, {values['high']:{sign}.4f}]"


def share_text(confidence: float) -> str:
    """0.95 as `95%`, 0.999 as `99.9%`."""
    return f"{confidence * 100:g}%"


def results_table(metrics: dict) -> list[str]:
    """The MLP's test scores with their bootstrap intervals, and each baseline's beside the paired difference
    MLP − baseline with its interval. The README's results table is this table of the committed metrics."""
    intervals = metrics["intervals"]
    rows = [["MLP (this pipeline)", f"{metrics['accuracy']:.4f} {interval_text(intervals['accuracy'])}",
             f"{metrics['f1_macro']:.4f} {interval_text(intervals['f1_macro'])}", "", ""]]
    for name, scores in metrics["baselines"].items():
        difference = scores["difference"]
        label = _BASELINE_NAMES.get(name, name) + (", strongest" if name == metrics["strongest_baseline"] else "")
        rows.append([label, scores["accuracy"], scores["f1_macro"],
                     *(f"{difference[score]['estimate']:+.4f} {interval_text(difference[score], signed=True)}"
                       for score in ("accuracy", "f1_macro"))])
    return markdown_table(["model", "test accuracy", "test macro-F1", "MLP − model, accuracy", "MLP − model, macro-F1"],
                  rows)


def _scores_text(scores: dict, score: str) -> str:
    return f"{scores[score]:.4f} {interval_text(scores['intervals'][score])}"


def novelty_table(metrics: dict) -> list[str]:
    """The headline: per novelty slice of the test split, its songs, the MLP's accuracy and macro-F1 and the
    strongest peer's, with intervals, and the paired difference. The README's results table is this table of the
    committed metrics."""
    slices, total = metrics["novelty"]["test"], sum(entry["songs"] for entry in metrics["novelty"]["test"].values())
    peer = metrics["strongest_baseline"]  # None where the baselines are the majority class alone
    rows = []
    for name in SLICES:
        entry = slices[name]
        if not entry["songs"]:
            rows.append([DESCRIPTIONS[name], 0, "", "", *([""] * 2 * (peer is not None))])
            continue
        row = [DESCRIPTIONS[name], f"{entry['songs']:,} ({entry['songs'] / total:.0%})",
               _scores_text(entry, "accuracy"), _scores_text(entry, "f1_macro")]
        if peer is not None:
            scores = entry["baselines"][peer]
            difference = scores["difference"]["accuracy"]
            row += [f"{_scores_text(scores, 'accuracy')} / {scores['f1_macro']:.4f}",
                    f"{difference['estimate']:+.4f} {interval_text(difference, signed=True)}"]
        rows.append(row)
    label = MODEL_NAMES.get(peer, peer)
    peer_columns = [] if peer is None else [f"{label} accuracy / macro-F1", f"MLP − {label}, accuracy"]
    return markdown_table(["test songs whose", "songs", "MLP accuracy", "MLP macro-F1", *peer_columns], rows)


def novelty_peer_table(metrics: dict) -> list[str]:
    """Every model's test accuracy and macro-F1 per novelty slice, with intervals."""
    slices = metrics["novelty"]["test"]
    names = [name for name in SLICES if slices[name]["songs"]]
    models = {"mlp": [slices[name] for name in names]}
    for peer in MODEL_NAMES:
        if peer != "mlp" and all(peer in slices[name].get("baselines", {}) for name in names):
            models[peer] = [slices[name]["baselines"][peer] for name in names]
    rows = [[MODEL_NAMES[model], *(f"{_scores_text(scores, 'accuracy')}; {scores['f1_macro']:.4f}"
                                   for scores in per_slice)] for model, per_slice in models.items()]
    return markdown_table(["model (accuracy [interval]; macro-F1)", *(DESCRIPTIONS[name] for name in names)], rows)


def _preprocessing_lines(preprocessor: dict) -> list[str]:
    numeric = preprocessor.get("numeric", {})
    logged = [name for name, stats in numeric.items() if stats.get("log1p")]
    encodings: dict[str, list[str]] = {}
    for name, stats in preprocessor.get("categorical", {}).items():
        encodings.setdefault(stats.get("encoding", "?"), []).append(name)
    lines = [f"- Numeric features scaled with the {preprocessor.get('scaler', '?')} scaler"
             + (f", after log1p of {', '.join(f'`{name}`' for name in logged)}" if logged else "") + "."]
    described = {"onehot": "One-hot encoded", "ordinal": "Encoded as ordinal labels"}
    lines += [f"- {described.get(encoding, f'Encoded {encoding}')}: " + ", ".join(f"`{name}`" for name in names) + "."
              for encoding, names in encodings.items()]
    text_fields = list(preprocessor.get("text", {}).get("fields", {}))
    if text_fields:
        lines.append("- Six genre scores per text field, from a naive Bayes model over hashed character n-grams "
                     "(training rows scored out of fold): " + ", ".join(f"`{name}`" for name in text_fields) + ".")
    id_fields = list(preprocessor.get("ids", {}).get("fields", {}))
    if id_fields:
        lines.append("- Six genre scores and a song count per id field, from the genres of the training songs with "
                     "the same id (training rows scored out of fold): " + ", ".join(f"`{name}`" for name in id_fields)
                     + ".")
    lines.append("- Missing values imputed, scaling, categories, text and id scores fitted, on the training split "
                 "only.")
    return lines


ARTIFACT = "spotify-genre-mlp"  # dvc.yaml's artifact (docs/shipping.md)
DATASET = "joebeachcapital/30000-spotify-songs"  # params.yaml's data.kaggle_dataset, the project's dataset
AUDIO_FEATURES_CLOSED = "2024-11-27"  # Spotify's audio-features endpoint, closed to new applications


def front_matter(metrics: dict, split: dict) -> list[str]:
    """The model card's YAML front matter in the Hugging Face model card format: license, library, tags, dataset,
    metrics and the model-index results (the test split's headline metrics, then per novelty slice)."""
    where = f"grouped by {split.get('group_by', 'track_id')}, seed {split.get('seed', '?')}"

    def result(name: str, scores: dict, split_name: str) -> dict:
        return {
            "task": {"type": "tabular-classification", "name": "Genre classification (six genres)"},
            "dataset": {"type": DATASET, "name": f"30000 Spotify Songs, {name} ({where})", "split": split_name},
            "metrics": [{"type": "accuracy", "value": scores["accuracy"], "name": f"accuracy, {name}"},
                        {"type": "f1", "value": scores["f1_macro"], "name": f"macro-F1, {name}",
                         "args": {"average": "macro"}}],
        }

    results = [result("test split", metrics, "test")]
    for slice_name, scores in metrics.get("novelty", {}).get("test", {}).items():
        if "accuracy" not in scores:  # a slice without test songs has no scores
            continue
        results.append(result(f"test songs, {DESCRIPTIONS.get(slice_name, slice_name)}", scores, "test"))
    card = {
        "license": "mit",
        "library_name": "pytorch",
        "pipeline_tag": "tabular-classification",
        "tags": ["tabular-classification", "music", "genre", "spotify", "audio-features", "dvc"],
        "datasets": [DATASET],
        "metrics": ["accuracy", "f1"],
        "model-index": [{"name": ARTIFACT, "results": results}],
    }
    return ["---", yaml.safe_dump(card, sort_keys=False, allow_unicode=True, width=1000).rstrip(), "---", ""]


def model_card(*, metrics: dict, data_sha256: str, split: dict, anova: dict, preprocessor: dict,
               feature_count: int, architecture: dict, params: dict, training: dict, multi_genre_tracks: int) -> str:
    """The model card in Markdown. Every input is a value that is the same on every run."""
    headline = [key for key in metrics["val"]]
    settings = metrics["bootstrap"]
    splits = split.get("splits", {})
    selected = anova.get("selected", [])
    lines = [
        *front_matter(metrics, split),
        "# Model card: spotify-genre MLP",
        "",
        "Generated by the `evaluate` stage (`python -m stages.evaluate`) from the files DVC tracks; "
        "do not edit by hand.",
        "",
        "## Data",
        "",
        f"- Raw data: `data/raw/spotify_songs.csv`, sha256 `{data_sha256}`.",
        f"- Split grouped by `{split.get('group_by', 'track_id')}` (no group in two splits), by a stable hash of "
        f"the group and seed {split.get('seed', '?')}.",
        "",
        *markdown_table(["split", "rows", "tracks"],
                [[name, values["rows"], values["tracks"]] for name, values in splits.items()]),
        "",
        f"- Selected features ({len(selected)} of {len(anova.get('features', selected))} candidates, by a one-way "
        "ANOVA F-test on the training split): " + ", ".join(f"`{name}`" for name in selected) + ".",
        *_preprocessing_lines(preprocessor),
        f"- Model inputs after preprocessing: {feature_count} columns.",
        "",
        "## Model and parameters",
        "",
        "Architecture: " + ", ".join(f"{key} = {value}" for key, value in architecture.items()) + ".",
        "",
        "Parameters the model was trained with:",
        "",
        "```yaml",
        yaml.safe_dump(params, sort_keys=False, default_flow_style=None).rstrip(),
        "```",
        "",
        "## Training",
        "",
        *markdown_table(["best epoch", "stopped epoch", "best validation loss"],
                [[training.get("best_epoch", "?"), training.get("stopped_epoch", "?"),
                  training.get("best_val_loss", "?")]]),
        "",
        "## Metrics",
        "",
        "Test split (validation in the last column; the model and its early stopping were chosen on "
        "validation only):",
        "",
        *markdown_table(["metric", "test", f"test, {share_text(settings['confidence'])} bootstrap interval", "validation"],
                [[key, metrics[key], interval_text(metrics["intervals"][key]) if key in metrics["intervals"] else "",
                  metrics["val"][key]] for key in headline]),
        "",
        "Per genre, test split:",
        "",
        *markdown_table(["genre", "precision", "recall", "F1", "support"],
                [[genre, v["precision"], v["recall"], v["f1"], v["support"]]
                 for genre, v in metrics["per_class"].items()]),
        "",
        "## Baselines",
        "",
        "Fitted on the same processed training split with the same features (early stopping, where a model has "
        "it, on the validation split), scored on the test split. In brackets: "
        f"{share_text(settings['confidence'])} percentile bootstrap intervals over {settings['resamples']:,} resamples of "
        f"the test songs (seed {settings['seed']}). Each difference is paired, both models scored on the same "
        "resampled songs: an interval above 0 means the MLP is ahead on this test split, one containing 0 a "
        "difference this split cannot tell from noise.",
        "",
        *results_table(metrics),
        "",
        "## Scores by how new a song is",
        "",
        "What a user gets depends on what the training songs already hold of a song: the test songs fall in three "
        "slices, by whether a training song shares the song's album (`track_album_id`), or else its artist "
        "(`track_artist`). Each slice is scored on its own songs, with its own bootstrap intervals "
        f"({share_text(settings['confidence'])}, paired for the differences). "
        "`spotify-genre predict --novelty` says which slice each song is in.",
        "",
        *novelty_table(metrics),
        "",
        "Every model, per slice:",
        "",
        *novelty_peer_table(metrics),
        "",
        "## Intended use",
        "",
        "- Labelling songs with one of six genres (edm, latin, pop, r&b, rap, rock) from the columns of the training "
        "data: Spotify's audio features (danceability, energy, key, loudness, mode, speechiness, acousticness, "
        "instrumentalness, liveness, valence, tempo, duration), popularity, release date, and the track, album and "
        "artist fields; with `spotify-genre predict` on files, or `spotify-genre serve` over HTTP, from the "
        f"registered model `{ARTIFACT}` (docs/shipping.md).",
        "- The score to expect is that of the song's row in the table by how new a song is: catalogue completion "
        "(albums the training songs hold) is where the model is at its best.",
        "- Not for: other genres or finer labels, songs whose features come from anywhere but Spotify's audio "
        "features, or any decision about an artist.",
        "",
        "## Known limits",
        "",
        "- The inputs are Spotify's audio features, as its Web API computed them. Spotify closed that endpoint "
        f"(audio features, audio analysis) to new applications on {AUDIO_FEATURES_CLOSED}: features for truly new "
        "songs must come from elsewhere, and features from another extractor (an open-source audio library, another "
        "service) have other scales and definitions, so they will not give these scores.",
        "- A song is scored far better when the training songs share its album than when they do not (the table "
        "above): the overall test accuracy mixes the three slices in this split's proportions, and a catalogue "
        "of new releases or new artists should expect the lower rows.",
        f"- Label noise: {multi_genre_tracks:,} tracks appear under more than one genre (the same song in "
        "playlists of different genres). Each row keeps its own label, so no model can be right on all of "
        "them.",
        "- Labels come from playlists: a song's genre is the genre of the playlist it was found in, not an "
        "attribute of the song, and playlist curators disagree.",
        "- The playlist fields (`playlist_name`, `playlist_id`, `playlist_subgenre`) determine the label and "
        "are never used as model inputs. The training songs' `playlist_subgenre` is a training target too "
        "where `train.subgenre_weight` is above 0 (a genre's probability is the sum of its subgenres').",
        "- The metrics come from one test split; they vary with `split.seed`. The intervals measure only the "
        "noise of which songs this test split holds, not that of the split or of training.",
        "",
    ]
    return "\n".join(lines)
