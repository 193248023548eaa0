"""SAE-ception: turn a sparse autoencoder's features into a training signal, in cycles."""

__version__ = "0.1.0"
