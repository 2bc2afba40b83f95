"""spotify-genre: the pipeline's stages (one module each) and the shared modules they stand on."""
