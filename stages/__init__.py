"""The DVC pipeline: one module per stage (`python -m stages.X`), on top of the `spotify_genre` library.

Run from the repository root; not installed. Importing this package imports `spotify_genre` first, which pins
the numerics before any stage loads numpy or torch.
"""

import spotify_genre  # noqa: F401
