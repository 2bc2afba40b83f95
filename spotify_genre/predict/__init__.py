"""Predicting genres for new songs: the predictor that streams an input through the preprocessor and the model a
chunk at a time (predictor), the predictions table and its bytes (table), where they are written (sinks), a
catalogue of many files (shards, and on Dask: distributed), and the `spotify-genre` command (cli)."""

from spotify_genre.predict.predictor import (DEFAULT_CHUNK_ROWS, MODEL_BATCH_ROWS, Outcome, Pool, Predictor, Settings,
                                             predict_stream)
from spotify_genre.predict.shards import Shard, claim, find_shards, is_catalogue, pending
from spotify_genre.predict.sinks import FORMATS, ReaderGone, open_sink, output_format, render
from spotify_genre.predict.table import PREDICTED, fast_predictions_csv, prediction_table, predictions_csv

__all__ = [
    "DEFAULT_CHUNK_ROWS", "FORMATS", "MODEL_BATCH_ROWS", "PREDICTED", "Outcome", "Pool", "Predictor", "ReaderGone",
    "Settings", "Shard", "claim", "fast_predictions_csv", "find_shards", "is_catalogue", "open_sink",
    "output_format", "pending", "predict_stream", "prediction_table", "predictions_csv", "render",
]
