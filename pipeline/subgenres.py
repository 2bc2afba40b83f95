"""Playlist subgenres as a finer training target: each genre is a mixture of its subgenres.

A song's `playlist_subgenre` comes from the same playlist as its genre, so it is a label, never an input. A model
may learn the subgenres of the training songs, and a genre's probability is then the sum of its subgenres'. The
subgenres are those of the training rows (`fit_subgenres`), ordered by genre, then by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from spotify_genre.songs.schema import GENRES

_NONE = ""  # a genre's one subgenre where no training song of it names one


@dataclass(frozen=True)
class Subgenres:
    names: tuple[str, ...]
    genres: np.ndarray  # int64, each subgenre's genre (index into GENRES), non-decreasing
    fallback: np.ndarray  # int64, per genre: its most common training subgenre, for rows naming none we know

    @property
    def starts(self) -> np.ndarray:
        """Where each genre's subgenres start (every genre has at least one)."""
        return np.searchsorted(self.genres, np.arange(len(GENRES)))

    def codes(self, labels: np.ndarray, subgenres: Sequence[object]) -> np.ndarray:
        """Each row's subgenre index (int64); a row whose (genre, subgenre) no training song had, or with none,
        gets its genre's most common."""
        index = {(int(genre), name): k for k, (genre, name) in enumerate(zip(self.genres, self.names))}
        keys = zip(np.asarray(labels).tolist(), _names(subgenres))
        return np.array([index.get(key, self.fallback[key[0]]) for key in keys], dtype=np.int64)

    def genre_probabilities(self, probabilities: np.ndarray) -> np.ndarray:
        """Subgenre probabilities (rows × subgenres) summed within each genre (rows × genres)."""
        return np.add.reduceat(probabilities, self.starts, axis=-1)


def fit_subgenres(labels: np.ndarray, subgenres: Sequence[object]) -> Subgenres:
    """The subgenres of the training rows: every (genre, subgenre) pair they hold, and one unnamed subgenre for
    a genre none of whose songs names one."""
    frame = pd.DataFrame({"genre": np.asarray(labels, dtype=np.int64), "name": _names(subgenres)})
    counts = frame.value_counts(sort=False)
    present = set(frame["genre"])
    pairs = set(counts.index) | {(genre, _NONE) for genre in range(len(GENRES)) if genre not in present}
    ordered = sorted(pairs)
    fallback = np.zeros(len(GENRES), dtype=np.int64)
    for genre in range(len(GENRES)):
        members = [k for k, (g, _) in enumerate(ordered) if g == genre]
        fallback[genre] = max(members, key=lambda k: (counts.get(ordered[k], 0), -k))
    return Subgenres(tuple(name for _, name in ordered), np.array([g for g, _ in ordered], dtype=np.int64), fallback)


def _names(subgenres: Sequence[object]) -> list[str]:
    return [value if isinstance(value, str) else _NONE for value in subgenres]
