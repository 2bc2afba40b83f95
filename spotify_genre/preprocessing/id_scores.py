"""Genre scores from an id a song shares with training songs: the genres of the other songs on its album.

Songs of one album are nearly always filed under one genre, and a quarter of the songs in any split have album
mates among the training songs. A smooth model cannot pick an album out of its year, month, popularity and name
scores the way a tree can, so the lookup is done here, once, for every model (preprocess.ids).

For a song whose `track_album_id` the training songs share, with c_g of them in genre g and n in all, the scores
are, per genre, log((c_g + alpha * p_g) / (n + alpha)) - log p_g, p_g being the training share of genre g (0 for
an id no training song has: nothing is known beyond the prior), and log(1 + n), how many songs the scores rest
on. Each is standardised with the training rows' mean and standard deviation.

Training rows are scored out of fold, like the text scores (text_scores.py): a row's album mates in its own fold,
itself included, play no part, so no training row's score has seen its own genre. The fitted state is the sorted
ids and their genre counts: an exact lookup, no hashing, so no two albums share a score by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import pandas as pd

from spotify_genre.preprocessing.text_scores import FittedScorer
from spotify_genre.songs.schema import GENRES

SONGS_SUFFIX = "songs"  # the output giving log(1 + n)


def id_genre_scores(counts: np.ndarray, prior: np.ndarray, alpha: float) -> np.ndarray:
    """(rows, classes + 1) unstandardised scores from (rows, classes) genre counts: see the module docstring."""
    songs = counts.sum(axis=1, keepdims=True)
    smoothed = (counts + alpha * prior) / (songs + alpha)
    return np.hstack([np.log(smoothed) - np.log(prior), np.log1p(songs)])


def id_strings(ids: pd.Series) -> np.ndarray:
    """The ids as a numpy string array, "" where missing (no id: nothing to look up)."""
    return ids.astype(object).where(ids.notna(), "").astype("str").to_numpy(dtype=str)


def find_keys(values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of `values` is in `keys` (sorted, distinct), and whether it is there at all ("" never is)."""
    if len(keys) == 0:
        return np.zeros(len(values), dtype=np.intp), np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(keys, values), len(keys) - 1)
    return at, (keys[at] == values) & (values != "")


def lookup_counts(ids: pd.Series, keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(rows, classes) the genre counts of each row's id among `keys` (sorted, distinct); zeros for an id not
    there or missing."""
    at, hit = find_keys(id_strings(ids), keys)
    found = np.zeros((len(hit), counts.shape[1]), dtype=np.float64)
    found[hit] = counts[at[hit]]
    return found


@dataclass(frozen=True, eq=False)
class IdScorer(FittedScorer):
    """One id field's fitted lookup: everything needed to score new songs."""

    SCALARS = ("alpha", "prior", "center", "scale")
    ARRAYS = ("keys", "counts")

    field: str
    keys: np.ndarray  # (ids,) str, sorted and distinct
    counts: np.ndarray  # (ids, classes) int32: the training songs of each id, per genre
    prior: tuple[float, ...]  # the training share of each genre
    alpha: float
    center: tuple[float, ...]
    scale: tuple[float, ...]

    @property
    def outputs(self) -> tuple[str, ...]:
        return (*(f"{self.field}_{genre}" for genre in GENRES), f"{self.field}_{SONGS_SUFFIX}")

    def transform(self, ids: pd.Series) -> np.ndarray:
        """(rows, classes + 1) standardised scores of new songs."""
        counts = lookup_counts(ids, self.keys, self.counts)
        scores = id_genre_scores(counts, np.array(self.prior), self.alpha)
        return (scores - np.array(self.center)) / np.array(self.scale)

