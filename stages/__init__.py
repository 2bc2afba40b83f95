"""spotify-genre: the pipeline's stages (one module each) and the shared modules they stand on."""

from stages.numerics import pin as _pin_numerics

# Before any stage module imports numpy or torch, whatever started this process (see stages/numerics.py).
_pin_numerics()
