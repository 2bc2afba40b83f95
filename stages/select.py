"""One-way ANOVA F-test of each candidate feature against the genre, on the training split only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import ANOVA_REPORT, SPLIT_DIR, read_split
from pipeline.params import SelectParams, load_params
from pipeline.timing import exit_with
from spotify_genre.atomic import write_json, write_text
from spotify_genre.errors import DataError, ParamsError, exits_cleanly
from spotify_genre.songs.features import candidate_features
from spotify_genre.songs.schema import LABEL

TRAIN_SPLIT = SPLIT_DIR / "train.parquet"
PLOT = Path("reports/plots/anova.csv")
MISSING_VALUES = "imputed with the training median of the feature before the F-test"


def significant(value: float, digits: int = 6) -> float:
    """`value` rounded to `digits` significant digits, so the report's bytes do not hang on the last bits."""
    return float(f"{value:.{digits}g}")


def impute_median(features: pd.DataFrame) -> pd.DataFrame:
    return features.fillna(features.median())


def eta_squared(values: np.ndarray, labels: np.ndarray) -> float:
    """Between-group sum of squares over total sum of squares: the share of variance the genre explains."""
    deviations = values - values.mean()
    total = float(deviations @ deviations)
    if total == 0.0:
        return 0.0
    groups = pd.Series(values).groupby(labels)
    between = float((groups.size() * (groups.mean() - values.mean()) ** 2).sum())
    return between / total


def f_classif(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one-way ANOVA F statistic and p-value of each column of `features` against `labels`: scikit-learn's
    sklearn.feature_selection.f_classif, operation for operation on a dense float array, so the same bits
    (tests/test_select.py holds them equal), without importing scikit-learn and scipy.stats: about a third of this
    stage's time went on those imports. A constant column divides by zero, as there (the caller's errstate)."""
    from scipy import special

    groups = [features[labels == label] for label in np.unique(labels)]
    n_classes = len(groups)
    n_samples_per_class = np.array([group.shape[0] for group in groups])
    n_samples = np.sum(n_samples_per_class)
    ss_alldata = sum((group**2).sum(axis=0) for group in groups)
    sums = [np.asarray(group.sum(axis=0)) for group in groups]
    square_of_sums_alldata = sum(sums) ** 2
    sstot = ss_alldata - square_of_sums_alldata / float(n_samples)
    ssbn = 0.0
    for k, group_sum in enumerate(sums):
        ssbn += group_sum**2 / n_samples_per_class[k]
    ssbn -= square_of_sums_alldata / float(n_samples)
    sswn = sstot - ssbn
    dfbn, dfwn = n_classes - 1, n_samples - n_classes
    msb, msw = ssbn / float(dfbn), sswn / float(dfwn)
    f_statistic = np.asarray(msb / msw).ravel()
    return f_statistic, special.fdtrc(dfbn, dfwn, f_statistic)


def anova_table(features: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """F statistic, p-value and eta squared of every column (no missing values) against the labels.

    A constant column explains nothing: it gets F = 0, p = 1 and eta squared = 0 instead of NaN.
    """
    if features.isna().any().any():
        raise ValueError("impute missing values before the F-test")
    with np.errstate(divide="ignore", invalid="ignore"):
        f_statistic, p_value = f_classif(features.to_numpy(dtype=np.float64), labels.to_numpy())
    undefined = ~np.isfinite(f_statistic)
    return pd.DataFrame({
        "feature": list(features.columns),
        "f_statistic": np.where(undefined, 0.0, f_statistic),
        "p_value": np.where(undefined, 1.0, p_value),
        "eta_squared": [eta_squared(features[name].to_numpy(dtype=np.float64), labels.to_numpy())
                        for name in features.columns],
    })


def rank_and_select(table: pd.DataFrame, params: SelectParams) -> pd.DataFrame:
    """Rank by F (ties in candidate order); select those passing both thresholds, then the top k of them."""
    ranked = table.sort_values("f_statistic", ascending=False, kind="stable").reset_index(drop=True)
    ranked["rank"] = np.arange(1, len(ranked) + 1)
    passes = (ranked["p_value"] <= params.max_p_value) & (ranked["eta_squared"] >= params.min_eta_squared)
    chosen = passes & (passes.cumsum() <= (params.k if params.k is not None else len(ranked)))
    ranked["selected"] = chosen.to_numpy(dtype=bool)
    if not ranked["selected"].any():
        raise ParamsError(f"params.yaml: select: no candidate feature has p <= select.max_p_value "
                          f"({params.max_p_value:g}) and eta squared >= select.min_eta_squared "
                          f"({params.min_eta_squared:g}); loosen the thresholds")
    return ranked


def anova_report(ranked: pd.DataFrame, params: SelectParams, n_train_rows: int) -> dict:
    features = [
        {"feature": row.feature, "f_statistic": significant(row.f_statistic), "p_value": significant(row.p_value),
         "eta_squared": significant(row.eta_squared), "rank": int(row.rank), "selected": bool(row.selected)}
        for row in ranked.itertuples(index=False)
    ]
    return {
        "selected": [row["feature"] for row in features if row["selected"]],
        "features": features,
        "rule": {
            "test": "one-way ANOVA F-test (sklearn.feature_selection.f_classif) against playlist_genre",
            "order": "F statistic, descending",
            "max_p_value": params.max_p_value,
            "min_eta_squared": params.min_eta_squared,
            "k": params.k,
            "missing_values": MISSING_VALUES,
        },
        "n_train_rows": n_train_rows,
    }


def plot_rows(report: dict) -> str:
    lines = ["feature,f_statistic,eta_squared,selected"]
    lines += [f"{row['feature']},{row['f_statistic']!r},{row['eta_squared']!r},{str(row['selected']).lower()}"
              for row in report["features"]]
    return "\n".join(lines) + "\n"


def select_features(train: pd.DataFrame, params: SelectParams) -> dict:
    """The ANOVA report of params.candidates on the training songs."""
    features = candidate_features(train, params.candidates)
    empty = [name for name in features.columns if features[name].isna().all()]
    if empty:
        raise DataError(f"{TRAIN_SPLIT}: feature {empty[0]!r} has no value in any training row")
    ranked = rank_and_select(anova_table(impute_median(features), train[LABEL]), params)
    return anova_report(ranked, params, len(train))


@exits_cleanly
def main(argv: list[str] | None = None) -> int:
    params = load_params()
    train = read_split("train")
    report = select_features(train, params.select)
    write_json(ANOVA_REPORT, report)
    write_text(PLOT, plot_rows(report))
    print(f"select: {len(report['selected'])} of {len(report['features'])} candidates: {', '.join(report['selected'])}")
    return 0


if __name__ == "__main__":
    exit_with(main)
