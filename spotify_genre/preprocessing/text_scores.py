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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from scipy import sparse

from spotify_genre.songs.schema import GENRES

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
    from scipy import sparse  # here, not at the top: the train stage loads a preprocessor but scores no text

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


def weighted(counts: sparse.csr_matrix, idf: np.ndarray) -> sparse.csr_matrix:
    """log(1 + count) * idf, each row scaled to unit length (an all-zero row stays zero)."""
    from scipy import sparse

    weights = counts.copy()
    weights.data = np.log1p(weights.data) * idf[weights.indices]
    norms = np.sqrt(np.asarray(weights.multiply(weights).sum(axis=1)).ravel())
    return sparse.csr_matrix(sparse.diags(1.0 / np.where(norms > 0.0, norms, 1.0)) @ weights)


def posterior(weights: sparse.csr_matrix, log_likelihood: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    from scipy.special import logsumexp

    joint = weights @ log_likelihood.T + log_prior
    return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))


def row_chunks(rows: int) -> list[slice]:
    return [slice(start, min(start + CHUNK_ROWS, rows)) for start in range(0, rows, CHUNK_ROWS)]


class FittedScorer:
    """What the text and id scorers share: one song field, scalars saved in the preprocessor's JSON (SCALARS, in
    that order) and arrays in its .npz (ARRAYS, named `<field>.<name>`), and equality over all of them."""

    field: str
    SCALARS: ClassVar[tuple[str, ...]] = ()
    ARRAYS: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The scalars, for JSON (tuples as lists); `arrays()` holds the rest."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name in self.SCALARS for value in [getattr(self, name)]}

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{self.field}.{name}": getattr(self, name) for name in self.ARRAYS}

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and self.to_dict() == other.to_dict() and self.field == other.field
                and all(np.array_equal(a, b) for a, b in zip(self.arrays().values(), other.arrays().values())))


@dataclass(frozen=True, eq=False)
class TextScorer(FittedScorer):
    """One field's fitted model: everything needed to score new songs."""

    SCALARS = ("buckets", "ngram_min", "ngram_max", "log_prior", "center", "scale")
    ARRAYS = ("idf", "log_likelihood")

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
        """(rows, classes) posterior genre probabilities, before standardising.

        Each distinct text is scored once (an album's name repeats on every one of its tracks): a row's score
        depends on its text alone, so the bytes are those of scoring every row."""
        codes, distinct = pd.factorize(texts.astype(object).where(texts.notna(), ""))
        distinct = pd.Series(distinct, dtype=object)
        out = np.empty((len(distinct), len(GENRES)))
        idf, table = self.idf.astype(np.float64), self.log_likelihood.astype(np.float64)
        prior = np.array(self.log_prior)
        for part in row_chunks(len(distinct)):
            counts = ngram_counts(distinct.iloc[part], self.buckets, self.ngram_min, self.ngram_max)
            out[part] = posterior(weighted(counts, idf), table, prior)
        return out[codes]

    def transform(self, texts: pd.Series) -> np.ndarray:
        """(rows, classes) standardised scores of new songs."""
        return (self.probabilities(texts) - np.array(self.center)) / np.array(self.scale)

