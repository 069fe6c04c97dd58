"""Itemic tokens: RQ-KMeans item codebooks, item token strings and vocabulary expansion."""
