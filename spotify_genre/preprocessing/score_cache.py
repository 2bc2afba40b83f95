"""Text scores remembered across chunks: a catalogue repeats its album names (and many titles) from chunk to chunk,
and a text's score depends on that text alone (text_scores.py), so a remembered score is the bytes scoring it
again would give.

Each field keeps the scores of its CAPACITY most recently seen texts (least recently seen forgotten first), so the
memory it takes is bounded whatever the catalogue's size.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pandas as pd

from spotify_genre.preprocessing.preprocessor import Preprocessor
from spotify_genre.preprocessing.text_scores import TextScorer

CAPACITY = 100_000


class RememberedScores:
    """A TextScorer's `transform`, each text's scores computed once while it stays among the `capacity` most
    recently seen: looked up all at once in a hash index of the remembered texts (a pandas Index)."""

    def __init__(self, scorer: TextScorer, capacity: int = CAPACITY):
        self.scorer, self.capacity = scorer, capacity
        self.field, self.outputs = scorer.field, scorer.outputs
        self._texts = np.empty(capacity, dtype=object)  # slot -> text; the first len(self) slots are in use
        self._scores = np.empty((capacity, len(scorer.outputs)))
        self._last_seen = np.zeros(capacity, dtype=np.int64)  # slot -> the call that last asked for its text
        self._calls = 0
        self._index = pd.Index([], dtype=object)  # text -> slot
        self._lock = threading.Lock()  # a Dask worker may run tasks on several threads with one predictor

    def __len__(self) -> int:
        return len(self._index)

    def transform(self, texts: pd.Series) -> np.ndarray:
        """(rows, classes) standardised scores, as TextScorer.transform gives them (a missing text is "")."""
        import pyarrow as pa
        import pyarrow.compute as pc

        array = pa.array(texts, from_pandas=True)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        encoded = pc.fill_null(array, "").dictionary_encode()
        distinct = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
        with self._lock:
            return self._remembered(distinct)[encoded.indices.to_numpy()]

    def _remembered(self, distinct: np.ndarray) -> np.ndarray:
        self._calls += 1
        slots = self._index.get_indexer(distinct)
        seen = slots >= 0
        self._last_seen[slots[seen]] = self._calls
        out = np.empty((len(distinct), self._scores.shape[1]))
        out[seen] = self._scores[slots[seen]]
        new = np.flatnonzero(~seen)
        if new.size:
            out[new] = self.scorer.transform(pd.Series(distinct[new], dtype=object))
            self._remember(distinct, out, new[-self.capacity:])
        return out

    def _remember(self, distinct: np.ndarray, scores: np.ndarray, new: np.ndarray) -> None:
        """Put these texts in free slots, then in those whose texts were asked for least recently."""
        used = len(self)
        free = np.arange(used, min(used + new.size, self.capacity))
        evicted = new.size - free.size
        oldest = np.argpartition(self._last_seen[:used], evicted - 1)[:evicted] if evicted else free[:0]
        slots = np.concatenate([free, oldest])
        self._texts[slots], self._scores[slots], self._last_seen[slots] = distinct[new], scores[new], self._calls
        self._index = pd.Index(self._texts[:used + free.size], dtype=object)


def remembering(pre: Preprocessor, capacity: int | None = None) -> Preprocessor:
    """`pre`, each text scorer remembering the scores of `capacity` texts (CAPACITY by default) across calls:
    model_inputs gives the same bytes with it."""
    capacity = capacity or CAPACITY
    return dataclasses.replace(pre, text=tuple(RememberedScores(scorer, capacity) for scorer in pre.text))
