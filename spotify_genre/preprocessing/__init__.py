"""The fitted preprocessor applied to songs: imputation, encoding and scaling of the features, and the genre scores
of their text (character n-grams) and ids (the training songs with the same album or artist), and the training
songs' albums and artists that say how new a song is; saved and loaded
safely, its text scores remembered across the chunks of a catalogue."""

from spotify_genre.preprocessing.id_scores import IdScorer
from spotify_genre.preprocessing.novelty import SLICES, KnownIds
from spotify_genre.preprocessing.preprocessor import (FORMAT_VERSION, CategoricalColumn, NumericColumn, Preprocessor,
                                                      arrays_path, load_preprocessor, model_inputs, save_preprocessor)
from spotify_genre.preprocessing.score_cache import RememberedScores, remembering
from spotify_genre.preprocessing.text_scores import TextScorer

__all__ = [
    "FORMAT_VERSION", "SLICES", "CategoricalColumn", "IdScorer", "KnownIds", "NumericColumn", "Preprocessor",
    "RememberedScores", "TextScorer", "arrays_path", "load_preprocessor", "model_inputs", "remembering",
    "save_preprocessor",
]
