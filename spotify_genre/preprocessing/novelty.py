"""How new a song is to the model, by the training songs it shares an album or an artist with.

A song whose album has training songs is scored by what those songs say of the album (preprocess.ids), and its
genre is nearly settled; a song on a new album of a known artist, or by a new artist, has only its own features.
Every song falls in exactly one slice:

- `known_album`: its `track_album_id` is one of the training songs' albums;
- `new_album`: its album is not, but its `track_artist` is one of the training songs' artists;
- `new_artist`: neither (a missing id or artist is never known).

The slices are defined here alone, by exact match of the raw ids (never their hashed features), from the training
split's songs: the evaluate stage reports each slice's scores, and `spotify-genre predict --novelty` says which
slice each song is in, so a user knows which score applies to it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from spotify_genre.preprocessing.id_scores import find_keys, id_strings

ALBUM_ID = "track_album_id"
ARTIST = "track_artist"
FIELDS = (ALBUM_ID, ARTIST)
COLUMN = "novelty"  # predict --novelty's output column
SLICES = ("known_album", "new_album", "new_artist")
DESCRIPTIONS = {
    "known_album": "album has training songs",
    "new_album": "new album, known artist",
    "new_artist": "new artist",
}


def sorted_keys(ids: pd.Series) -> np.ndarray:
    """The distinct non-missing ids, sorted."""
    values = np.unique(id_strings(ids))
    return values[values != ""]


@dataclass(frozen=True, eq=False)
class KnownIds:
    """The training songs' albums and artists (sorted, distinct strings)."""

    albums: np.ndarray
    artists: np.ndarray

    @classmethod
    def from_songs(cls, songs: pd.DataFrame) -> KnownIds:
        return cls(albums=sorted_keys(songs[ALBUM_ID]), artists=sorted_keys(songs[ARTIST]))

    def codes(self, songs: pd.DataFrame) -> np.ndarray:
        """Each song's slice, as an index into SLICES (int8)."""
        known_album = find_keys(id_strings(songs[ALBUM_ID]), self.albums)[1]
        known_artist = find_keys(id_strings(songs[ARTIST]), self.artists)[1]
        return np.where(known_album, 0, np.where(known_artist, 1, 2)).astype(np.int8)

    def slices(self, songs: pd.DataFrame) -> np.ndarray:
        """Each song's slice name."""
        return np.asarray(SLICES)[self.codes(songs)]

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"known.{ALBUM_ID}": self.albums, f"known.{ARTIST}": self.artists}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> KnownIds:
        """Rebuild from `arrays()`; ValueError unless each is distinct strings in sorted order."""
        found = []
        for name in (f"known.{ALBUM_ID}", f"known.{ARTIST}"):
            keys = arrays.get(name)
            if keys is None or keys.dtype.kind != "U" or keys.ndim != 1 or (keys[1:] <= keys[:-1]).any():
                raise ValueError(f"array {name!r} must be distinct strings in sorted order")
            found.append(keys)
        return cls(*found)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, KnownIds) and np.array_equal(self.albums, other.albums)
                and np.array_equal(self.artists, other.artists))
