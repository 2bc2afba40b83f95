"""The predictions table, shared by the evaluate stage and the predict command so the two agree to the byte."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

PREDICTED = "predicted"
PROBABILITY_FORMAT = "%.6f"


def top_genres(probabilities: np.ndarray, top_k: int) -> np.ndarray:
    """Each row's top_k genres (column indices), most likely first; of equal probabilities, the first genre."""
    return np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k]


def prediction_table(ids: pd.Series | pd.DataFrame, probabilities: np.ndarray, classes: Sequence[str], *,
                     actual: Sequence[str] | None = None, top_k: int = 0) -> pd.DataFrame:
    """One row per song: its id, [the actual genre,] the predicted genre, one probability column per genre,
    then the top k genres with their probabilities, most likely first. `ids` is the id column, or a frame of it
    and further columns to put last (the novelty slice)."""
    classes = np.asarray(list(classes), dtype=object)
    trailing = None
    if isinstance(ids, pd.DataFrame):
        ids, trailing = ids.iloc[:, 0], ids.iloc[:, 1:]
    table = {ids.name: ids.to_numpy()}
    if actual is not None:
        table["actual"] = np.asarray(actual, dtype=object)
    table[PREDICTED] = classes[probabilities.argmax(axis=1)]
    table.update({name: probabilities[:, i] for i, name in enumerate(classes)})
    if top_k:
        order = top_genres(probabilities, top_k)
        for rank in range(top_k):
            table[f"top{rank + 1}_genre"] = classes[order[:, rank]]
            table[f"top{rank + 1}_probability"] = probabilities[np.arange(len(order)), order[:, rank]]
    if trailing is not None:
        table.update({name: trailing[name].to_numpy() for name in trailing.columns})
    return pd.DataFrame(table)


def predictions_csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, lineterminator="\n", float_format=PROBABILITY_FORMAT)
