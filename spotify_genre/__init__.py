"""spotify-genre: what using a trained genre model needs, from raw songs to a predictions table.

Bottom modules (errors, numerics, atomic, validation), then reading and checking songs (songs), the fitted
preprocessor and its genre scores (preprocessing), the network and its safe on-disk bundle (model), and predicting:
the streaming predictor, the predictions table, its sinks, catalogues of shards and the `spotify-genre` command
(predict). The DVC pipeline that fits all of these lives in the repository's `pipeline/` and `stages/` and is not
installed.
"""

from spotify_genre.numerics import pin as _pin_numerics

__version__ = "0.2.0"

# Before any module of this package imports numpy or torch, whatever started this process (see numerics.py).
_pin_numerics()
