"""Genre scores from the text of a song: naive Bayes over hashed character n-grams, one model per text field.

Each text field (track_name, track_album_name; track_artist only when asked for, since it lets a model recognise
artists rather than hear genres) becomes one score per genre: the genre's posterior probability under a
multinomial naive Bayes model of the field's character n-grams, standardised with the training rows' mean and
standard deviation.

- n-grams: the text lower-cased, cut to MAX_CHARS - 2 characters and padded with a space at each end; every run
  of ngram_min..ngram_max characters, hashed into `buckets` buckets (the hashing trick: no vocabulary to store).
  A missing text is the empty string.
- weights: log(1 + count) times the training IDF, each row scaled to unit length (scikit-learn's
  TfidfTransformer on log(1 + count); its own sublinear_tf's 1 + log(count) scored 0.3 points lower on
  validation).
- training rows are scored out of fold, as scikit-learn's TargetEncoder does: they are cut into `folds` folds by
  a hash of their group (track or artist, as the split groups them) and each is scored by the model of the other
  folds, so no training row's score has seen its own genre. Every other song is scored by the model of all
  training rows, which is what the fitted scorer holds.
Songs go through in chunks of CHUNK_ROWS, so memory does not grow with their number; the fitted state is two
small arrays per field (stored by the preprocessor in an .npz) and a few numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import logsumexp

from stages.params import TextParams
from stages.schema import GENRES

TEXT_FIELDS = ("track_name", "track_album_name", "track_artist")
MAX_CHARS = 64
CHUNK_ROWS = 50_000
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2**64 / golden ratio: multiplying by it spreads a code point's bits


def _code_points(texts: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The padded, lower-cased texts' Unicode code points end to end, and each text's length."""
    clean = texts.astype(object).where(texts.notna(), "").astype("str").str.lower().str.slice(0, MAX_CHARS - 2)
    padded = " " + clean + " "
    points = np.frombuffer("".join(padded.tolist()).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return points.astype(np.uint64), padded.str.len().to_numpy(dtype=np.int64)


def ngram_counts(texts: pd.Series, buckets: int, ngram_min: int, ngram_max: int) -> sparse.csr_matrix:
    """(rows, buckets) how often each text's character n-grams fall in each hash bucket."""
    points, lengths = _code_points(texts)
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    end_of = np.repeat(np.cumsum(lengths), lengths)  # where each position's text ends
    found_rows, found_buckets = [], []
    for n in range(ngram_min, ngram_max + 1):
        starts = len(points) - n + 1
        if starts <= 0:
            break
        hashed = np.full(starts, n, dtype=np.uint64)
        for offset in range(n):
            hashed = (hashed ^ points[offset:offset + starts]) * _MIX
        hashed ^= hashed >> np.uint64(32)
        inside = np.arange(starts) + n <= end_of[:starts]  # the n-gram does not run into the next text
        found_buckets.append((hashed[inside] % np.uint64(buckets)).astype(np.int64))
        found_rows.append(row_of[:starts][inside])
    row_index = np.concatenate(found_rows) if found_rows else np.zeros(0, dtype=np.int64)
    bucket = np.concatenate(found_buckets) if found_buckets else np.zeros(0, dtype=np.int64)
    counts = sparse.csr_matrix((np.ones(len(row_index)), (row_index, bucket)), shape=(len(lengths), buckets))
    counts.sum_duplicates()
    return counts


def _weighted(counts: sparse.csr_matrix, idf: np.ndarray) -> sparse.csr_matrix:
    """log(1 + count) * idf, each row scaled to unit length (an all-zero row stays zero)."""
    weights = counts.copy()
    weights.data = np.log1p(weights.data) * idf[weights.indices]
    norms = np.sqrt(np.asarray(weights.multiply(weights).sum(axis=1)).ravel())
    return sparse.csr_matrix(sparse.diags(1.0 / np.where(norms > 0.0, norms, 1.0)) @ weights)


def _log_likelihood(class_sums: np.ndarray, alpha: float) -> np.ndarray:
    smoothed = class_sums + alpha
    return np.log(smoothed) - np.log(smoothed.sum(axis=1, keepdims=True))


def _log_prior(class_rows: np.ndarray) -> np.ndarray:
    """Class frequencies with one added to each, so a class absent from some folds keeps a finite score."""
    return np.log((class_rows + 1.0) / (class_rows.sum() + len(class_rows)))


def _posterior(weights: sparse.csr_matrix, log_likelihood: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    joint = weights @ log_likelihood.T + log_prior
    return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))


def _chunks(rows: int) -> list[slice]:
    return [slice(start, min(start + CHUNK_ROWS, rows)) for start in range(0, rows, CHUNK_ROWS)]


def fold_of(groups: pd.Series, folds: int) -> np.ndarray:
    """Each row's fold in 0..folds-1, a fixed hash of its group: all rows of a group share a fold."""
    hashed = pd.util.hash_pandas_object(groups.astype("str"), index=False).to_numpy()
    return (hashed % np.uint64(folds)).astype(np.int64)


@dataclass(frozen=True, eq=False)
class TextScorer:
    """One field's fitted model: everything needed to score new songs."""

    field: str
    buckets: int
    ngram_min: int
    ngram_max: int
    idf: np.ndarray  # (buckets,) float32
    log_likelihood: np.ndarray  # (classes, buckets) float32
    log_prior: tuple[float, ...]
    center: tuple[float, ...]
    scale: tuple[float, ...]

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(f"{self.field}_{genre}" for genre in GENRES)

    def probabilities(self, texts: pd.Series) -> np.ndarray:
        """(rows, classes) posterior genre probabilities, before standardising."""
        out = np.empty((len(texts), len(GENRES)))
        idf, table = self.idf.astype(np.float64), self.log_likelihood.astype(np.float64)
        prior = np.array(self.log_prior)
        for part in _chunks(len(texts)):
            counts = ngram_counts(texts.iloc[part], self.buckets, self.ngram_min, self.ngram_max)
            out[part] = _posterior(_weighted(counts, idf), table, prior)
        return out

    def transform(self, texts: pd.Series) -> np.ndarray:
        """(rows, classes) standardised scores of new songs."""
        return (self.probabilities(texts) - np.array(self.center)) / np.array(self.scale)

    def to_dict(self) -> dict[str, Any]:
        """The scalars, for JSON; `arrays()` holds the rest."""
        return {"buckets": self.buckets, "ngram_min": self.ngram_min, "ngram_max": self.ngram_max,
                "log_prior": list(self.log_prior), "center": list(self.center), "scale": list(self.scale)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{self.field}.idf": self.idf, f"{self.field}.log_likelihood": self.log_likelihood}

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, TextScorer) and self.to_dict() == other.to_dict() and self.field == other.field
                and all(np.array_equal(a, b) for a, b in zip(self.arrays().values(), other.arrays().values())))


def fit_text_scorer(texts: pd.Series, labels: np.ndarray, groups: pd.Series, field: str,
                    params: TextParams) -> tuple[TextScorer, np.ndarray]:
    """The field's scorer fitted on training rows, and those rows' standardised out-of-fold scores."""
    rows, classes, buckets = len(texts), len(GENRES), params.buckets
    chunks = _chunks(rows)

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
        sums += (member @ _weighted(counts(part), idf.astype(np.float64))).toarray()
    sums = sums.reshape(params.folds, classes, buckets)
    class_rows = np.bincount(cell, minlength=params.folds * classes).reshape(params.folds, classes)

    others = [(_log_likelihood(sums.sum(axis=0) - sums[f], params.alpha),
               _log_prior(class_rows.sum(axis=0) - class_rows[f])) for f in range(params.folds)]
    scores = np.empty((rows, classes))
    for part in chunks:
        weights, in_fold = _weighted(counts(part), idf.astype(np.float64)), fold[part]
        for f, (table, prior) in enumerate(others):
            at = np.flatnonzero(in_fold == f)
            scores[part.start + at] = _posterior(weights[at], table, prior)

    center = scores.mean(axis=0)
    scale = scores.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    scorer = TextScorer(
        field=field, buckets=buckets, ngram_min=params.ngram_min, ngram_max=params.ngram_max, idf=idf,
        log_likelihood=_log_likelihood(sums.sum(axis=0), params.alpha).astype(np.float32),
        log_prior=tuple(float(v) for v in _log_prior(class_rows.sum(axis=0))),
        center=tuple(float(v) for v in center), scale=tuple(float(v) for v in scale))
    return scorer, (scores - center) / scale


def scorer_from_dict(field: str, data: Any, arrays: dict[str, np.ndarray]) -> TextScorer:
    """Rebuild a scorer from to_dict()'s output and its arrays, refusing anything else with a ValueError."""
    where = f"text.{field}"
    keys = ("buckets", "ngram_min", "ngram_max", "log_prior", "center", "scale")
    if not isinstance(data, dict) or set(data) != set(keys):
        raise ValueError(f"{where} must be a mapping with exactly {', '.join(keys)}")
    for key in ("buckets", "ngram_min", "ngram_max"):
        if type(data[key]) is not int or data[key] < 1:
            raise ValueError(f"{where}.{key} must be a positive integer, not {data[key]!r}")
    if data["ngram_min"] > data["ngram_max"]:
        raise ValueError(f"{where}: ngram_min exceeds ngram_max")
    for key in ("log_prior", "center", "scale"):
        values = data[key]
        if (not isinstance(values, list) or len(values) != len(GENRES)
                or not all(type(v) in (int, float) and math.isfinite(v) for v in values)):
            raise ValueError(f"{where}.{key} must be {len(GENRES)} finite numbers")
    if min(data["scale"]) <= 0.0:
        raise ValueError(f"{where}.scale must be positive")
    shapes = {f"{field}.idf": (data["buckets"],), f"{field}.log_likelihood": (len(GENRES), data["buckets"])}
    for name, shape in shapes.items():
        array = arrays.get(name)
        if array is None or array.dtype != np.float32 or array.shape != shape or not np.isfinite(array).all():
            raise ValueError(f"array {name!r} must be finite float32 of shape {shape}")
    return TextScorer(field, data["buckets"], data["ngram_min"], data["ngram_max"], arrays[f"{field}.idf"],
                      arrays[f"{field}.log_likelihood"], tuple(float(v) for v in data["log_prior"]),
                      tuple(float(v) for v in data["center"]), tuple(float(v) for v in data["scale"]))
