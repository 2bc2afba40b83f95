"""Fitting the preprocessor on the training songs: the statistics of each feature and the text scorers.

What is fitted here is applied by the library (spotify_genre.preprocessing: preprocessor, text_scores, id_scores), so
the pipeline and `spotify-genre predict` turn songs into model inputs with the same code.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import sparse

from pipeline.params import IdParams, PreprocessParams, TextParams
from spotify_genre.errors import DataError, ParamsError
from spotify_genre.preprocessing.id_scores import IdScorer, id_genre_scores, id_strings, lookup_counts
from spotify_genre.preprocessing.novelty import KnownIds
from spotify_genre.preprocessing.preprocessor import CategoricalColumn, Column, NumericColumn, Preprocessor
from spotify_genre.preprocessing.text_scores import TextScorer, ngram_counts, posterior, row_chunks, weighted
from spotify_genre.songs.features import CATEGORICAL_FEATURES, candidate_features
from spotify_genre.songs.schema import GENRES, LABEL


def _scale_guard(scale: float, center: float) -> float:
    """1 where the training values (nearly) do not vary, so a constant feature becomes 0, not inf or NaN."""
    return scale if math.isfinite(scale) and scale > 1e-12 * max(1.0, abs(center)) else 1.0


def _fit_numeric(name: str, values: pd.Series, log1p: bool, scaler: str) -> NumericColumn:
    impute = float(values.median())
    filled = values.fillna(impute).to_numpy(dtype=np.float64)
    if log1p:
        if filled.min() < 0.0:
            raise ParamsError(f"params.yaml: preprocess.log_transform: {name!r} has negative training values "
                              f"(min {filled.min():g}); log1p applies only to non-negative features")
        filled = np.log1p(filled)
    if scaler == "standard":
        center, scale = float(filled.mean()), float(filled.std())
    else:
        q25, center, q75 = (float(q) for q in np.quantile(filled, [0.25, 0.5, 0.75]))
        scale = q75 - q25
    return NumericColumn(name, impute, log1p, center, _scale_guard(scale, center))


def _fit_categorical(name: str, values: pd.Series, encoding: str) -> CategoricalColumn:
    present = values.dropna()
    if (present != present.round()).any():
        raise DataError(f"categorical feature {name!r} has non-integer values in the training split")
    counts = present.astype(np.int64).value_counts()
    categories = tuple(int(c) for c in sorted(counts.index))
    impute = int(counts.sort_index(kind="stable").idxmax())
    return CategoricalColumn(name, impute, categories, encoding)


def fit_preprocessor(features: pd.DataFrame, params: PreprocessParams, *, data_sha256: str) -> Preprocessor:
    """Learn every statistic from `features` (training rows only; its columns are the input features, in order)."""
    if features.empty or features.shape[1] == 0:
        raise DataError("cannot fit the preprocessor: no training rows or no features")
    columns: list[Column] = []
    for name in features.columns:
        values = features[name].astype(np.float64)
        if values.isna().all():
            raise DataError(f"feature {name!r} has no value in any training row")
        if name in CATEGORICAL_FEATURES:
            columns.append(_fit_categorical(name, values, params.categorical))
        else:
            columns.append(_fit_numeric(name, values, name in params.log_transform, params.scaler))
    return Preprocessor(data_sha256=data_sha256, scaler=params.scaler, columns=tuple(columns))


def fit_model_inputs(train: pd.DataFrame, selected: list[str], params: PreprocessParams, *, data_sha256: str,
                     groups: pd.Series) -> tuple[Preprocessor, np.ndarray]:
    """Fit on the training songs alone; return the preprocessor and those songs' model inputs.

    The text and id scores of these songs are out of fold, by `groups` (see spotify_genre/preprocessing/text_scores.py
    and id_scores.py): for any other songs, model_inputs gives the scores of the model of all training songs."""
    features = candidate_features(train, selected)
    labels = encode_labels(train[LABEL])
    text = [fit_text_scorer(train[field], labels, groups, field, params.text) for field in params.text.fields]
    ids = [fit_id_scorer(train[field], labels, groups, field, params.ids) for field in params.ids.fields]
    pre = dataclasses.replace(fit_preprocessor(features, params, data_sha256=data_sha256),
                              text=tuple(scorer for scorer, _ in text), ids=tuple(scorer for scorer, _ in ids),
                              known=KnownIds.from_songs(train))
    inputs = np.hstack([pre.transform(features), *(scores for _, scores in text), *(scores for _, scores in ids)])
    return pre, np.ascontiguousarray(inputs, dtype=np.float32)


def encode_labels(genres: pd.Series) -> np.ndarray:
    """Each genre's index in GENRES (int64); an unknown genre is a DataError."""
    codes = pd.Index(GENRES).get_indexer(genres).astype(np.int64)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise DataError(f"row {row}: genre {genres.iloc[row]!r} is not one of {', '.join(GENRES)}")
    return codes


def _log_likelihood(class_sums: np.ndarray, alpha: float) -> np.ndarray:
    smoothed = class_sums + alpha
    return np.log(smoothed) - np.log(smoothed.sum(axis=1, keepdims=True))


def _log_prior(class_rows: np.ndarray) -> np.ndarray:
    """Class frequencies with one added to each, so a class absent from some folds keeps a finite score."""
    return np.log((class_rows + 1.0) / (class_rows.sum() + len(class_rows)))


def fold_of(groups: pd.Series, folds: int) -> np.ndarray:
    """Each row's fold in 0..folds-1, a fixed hash of its group: all rows of a group share a fold."""
    hashed = pd.util.hash_pandas_object(groups.astype("str"), index=False).to_numpy()
    return (hashed % np.uint64(folds)).astype(np.int64)


def fit_text_scorer(texts: pd.Series, labels: np.ndarray, groups: pd.Series, field: str,
                    params: TextParams) -> tuple[TextScorer, np.ndarray]:
    """The field's scorer fitted on training rows, and those rows' standardised out-of-fold scores."""
    rows, classes, buckets = len(texts), len(GENRES), params.buckets
    chunks = row_chunks(rows)

    def counts(part: slice) -> sparse.csr_matrix:
        return ngram_counts(texts.iloc[part], buckets, params.ngram_min, params.ngram_max)

    document_frequency = sum(np.bincount(counts(part).indices, minlength=buckets) for part in chunks)
    idf = (np.log((1.0 + rows) / (1.0 + document_frequency)) + 1.0).astype(np.float32)
    fold = fold_of(groups, params.folds)
    cell = fold * classes + labels  # each row's (fold, genre)
    sums = np.zeros((params.folds * classes, buckets))
    for part in chunks:
        size = part.stop - part.start
        member = sparse.csr_matrix((np.ones(size), (cell[part], np.arange(size))), shape=(len(sums), size))
        sums += (member @ weighted(counts(part), idf.astype(np.float64))).toarray()
    sums = sums.reshape(params.folds, classes, buckets)
    class_rows = np.bincount(cell, minlength=params.folds * classes).reshape(params.folds, classes)

    others = [(_log_likelihood(sums.sum(axis=0) - sums[f], params.alpha),
               _log_prior(class_rows.sum(axis=0) - class_rows[f])) for f in range(params.folds)]
    scores = np.empty((rows, classes))
    for part in chunks:
        weights, in_fold = weighted(counts(part), idf.astype(np.float64)), fold[part]
        for f, (table, prior) in enumerate(others):
            at = np.flatnonzero(in_fold == f)
            scores[part.start + at] = posterior(weights[at], table, prior)

    standardised, center, scale = _standardised(scores)
    scorer = TextScorer(
        field=field, buckets=buckets, ngram_min=params.ngram_min, ngram_max=params.ngram_max, idf=idf,
        log_likelihood=_log_likelihood(sums.sum(axis=0), params.alpha).astype(np.float32),
        log_prior=tuple(float(v) for v in _log_prior(class_rows.sum(axis=0))),
        center=center, scale=scale)
    return scorer, standardised


def _standardised(scores: np.ndarray) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Scores less their column means over their column standard deviations (1 for a constant column), and the
    two, for the scorer to apply to new songs."""
    center = scores.mean(axis=0)
    scale = scores.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    return (scores - center) / scale, tuple(float(v) for v in center), tuple(float(v) for v in scale)


def id_counts(ids: pd.Series, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ids present (sorted) and how many of their rows are in each genre, (ids, classes) int32."""
    values = id_strings(ids)
    present = values != ""
    keys, position = np.unique(values[present], return_inverse=True)
    counts = np.zeros((len(keys), len(GENRES)), dtype=np.int32)
    np.add.at(counts, (position, labels[present]), 1)
    return keys, counts


def fit_id_scorer(ids: pd.Series, labels: np.ndarray, groups: pd.Series, field: str,
                  params: IdParams) -> tuple[IdScorer, np.ndarray]:
    """The field's lookup fitted on training rows, and those rows' standardised out-of-fold scores."""
    prior = np.exp(_log_prior(np.bincount(labels, minlength=len(GENRES))))
    keys, counts = id_counts(ids, labels)
    fold = fold_of(groups, params.folds)
    scores = np.empty((len(ids), len(GENRES) + 1))
    for f in range(params.folds):
        inside = fold == f
        other_keys, other_counts = id_counts(ids[~inside], labels[~inside])
        scores[inside] = id_genre_scores(lookup_counts(ids[inside], other_keys, other_counts), prior, params.alpha)
    standardised, center, scale = _standardised(scores)
    scorer = IdScorer(field=field, keys=keys, counts=counts, prior=tuple(float(v) for v in prior),
                      alpha=params.alpha, center=center, scale=scale)
    return scorer, standardised
