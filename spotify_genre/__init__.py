"""spotify-genre: what using a trained genre model needs, from raw songs to a predictions table.

Reading and checking songs (schema), the features derived from them (features), the fitted preprocessor and
text scores (preprocessor, text_scores), the network (model), its safe on-disk bundle (bundle), the predictions
table (predictions) and the `spotify-genre` command (cli). The DVC pipeline that fits all of these lives in the
repository's `stages/` and is not installed.
"""

from spotify_genre.numerics import pin as _pin_numerics

__version__ = "0.2.0"

# Before any module of this package imports numpy or torch, whatever started this process (see numerics.py).
_pin_numerics()
