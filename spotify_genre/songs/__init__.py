"""Songs: the raw-data schema, the features derived from a song, and the readers that check songs as they read them
(a CSV a chunk of whole records at a time, or a Parquet file a record batch at a time)."""

from spotify_genre.songs.csv_reader import (CSV, INPUT_SUFFIXES, PARQUET, STDIO, Songs, csv_chunks, header_only,
                                            open_csv_stream, parse_csv, place, read_csv_bytes, required_columns,
                                            songs_suffix)
from spotify_genre.songs.features import (CANDIDATE_FEATURES, CATEGORICAL_FEATURES, DERIVED_FEATURES, ID_FIELDS,
                                          TEXT_FIELDS, candidate_features, encode_characters, release_date_parts,
                                          with_characters)
from spotify_genre.songs.parquet_reader import open_parquet, parquet_batches, parse_parquet
from spotify_genre.songs.records import Records, split_records
from spotify_genre.songs.schema import (AUDIO_FEATURES, COLUMN_NAMES, COLUMNS, GENRES, INPUT_COLUMNS, LABEL,
                                        PLAYLIST_FIELDS, RELEASE_DATE, SUBGENRE_FIELD, TRACK_ID, Column, check_columns,
                                        describe_problem, read_songs, row_problems, validate_songs)

__all__ = [
    "AUDIO_FEATURES", "CANDIDATE_FEATURES", "CATEGORICAL_FEATURES", "COLUMNS", "COLUMN_NAMES", "CSV",
    "DERIVED_FEATURES", "GENRES", "ID_FIELDS", "INPUT_COLUMNS", "INPUT_SUFFIXES", "LABEL", "PARQUET",
    "PLAYLIST_FIELDS", "RELEASE_DATE", "STDIO", "SUBGENRE_FIELD", "TEXT_FIELDS", "TRACK_ID", "Column", "Records",
    "Songs", "candidate_features", "check_columns", "csv_chunks", "describe_problem", "encode_characters",
    "header_only", "open_csv_stream", "open_parquet", "parquet_batches", "parse_csv", "parse_parquet", "place",
    "read_csv_bytes", "read_songs", "release_date_parts", "required_columns", "row_problems", "songs_suffix",
    "split_records", "validate_songs", "with_characters",
]
