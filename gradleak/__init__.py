"""gradleak: what an honest-but-curious federated-learning server learns from client updates."""

__version__ = "0.1.0"
