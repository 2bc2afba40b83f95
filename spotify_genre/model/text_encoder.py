"""A character-level recurrent encoder of a song's text fields (title, album name), trained with the MLP.

The characters travel inside the model's one input matrix: after the processed features come `max_chars` columns
per field holding character codes (as floats), so every caller that feeds the MLP a matrix (training, evaluate,
predict) feeds this model the same way, with the codes appended by songs.features.with_characters.
"""

from __future__ import annotations

import torch
from torch import nn

from spotify_genre.songs.features import PADDING, VOCABULARY

class CharacterEncoder(nn.Module):
    """Character embeddings through a one-layer GRU or LSTM; a field's code is the mean of the recurrent states
    over its characters (zeros for an empty field). One encoder, shared by every field."""

    def __init__(self, kind: str, embedding_dim: int, hidden: int):
        super().__init__()
        self.characters = nn.Embedding(VOCABULARY, embedding_dim, padding_idx=PADDING)
        recurrent = nn.GRU if kind == "gru" else nn.LSTM
        self.recurrent = recurrent(embedding_dim, hidden, batch_first=True)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: (rows, fields, max_chars) -> (rows, fields × hidden)."""
        rows, fields, length = codes.shape
        flat = codes.reshape(rows * fields, length).long()
        states, _ = self.recurrent(self.characters(flat))
        present = (flat != PADDING).unsqueeze(-1).to(states.dtype)
        mean = (states * present).sum(dim=1) / present.sum(dim=1).clamp(min=1.0)
        return mean.reshape(rows, -1)


class TextEncodedModel(nn.Module):
    """The processed features and the recurrent codes of the text fields, side by side, into `model`."""

    def __init__(self, n_features: int, fields: int, max_chars: int, encoder: CharacterEncoder, model: nn.Module):
        super().__init__()
        self.n_features, self.fields, self.max_chars = n_features, fields, max_chars
        self.encoder, self.model = encoder, model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        features, codes = inputs[:, :self.n_features], inputs[:, self.n_features:]
        encoded = self.encoder(codes.reshape(len(inputs), self.fields, self.max_chars))
        return self.model(torch.cat([features, encoded], dim=1))
