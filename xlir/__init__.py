"""xlir: cross-lingual dense + BM25 retrieval service."""

__version__ = "0.1.0"
