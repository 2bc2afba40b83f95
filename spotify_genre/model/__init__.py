"""The network: built from a bundle's architecture (network, text_encoder), multiplied through numpy's BLAS (blas),
run for predictions (inference), and saved and loaded safely with what it was trained on (bundle)."""

from spotify_genre.model.bundle import BUNDLE_FORMAT, Architecture, Bundle, load_bundle, save_bundle
from spotify_genre.model.inference import Classifier, Network, compile_network, predict_proba
from spotify_genre.model.network import (EmbeddedMLP, EnsembleBatchNorm, EnsembleLinear, GenreMixture, Linear,
                                         PeriodicEmbedding, build_mlp, log_probabilities, member_loss, model_members,
                                         n_classes, resolve_device, training_loss)
from spotify_genre.model.text_encoder import CharacterEncoder, TextEncodedModel

__all__ = [
    "BUNDLE_FORMAT", "Architecture", "Bundle", "CharacterEncoder", "Classifier", "EmbeddedMLP", "EnsembleBatchNorm",
    "EnsembleLinear", "GenreMixture", "Linear", "Network", "PeriodicEmbedding", "TextEncodedModel", "build_mlp",
    "compile_network", "load_bundle", "log_probabilities", "member_loss", "model_members", "n_classes",
    "predict_proba", "resolve_device", "save_bundle", "training_loss",
]
