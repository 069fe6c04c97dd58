"""Recommendation data: raw log schema, task builders (pre-training, SFT, RL), public and synthetic
sources, the tokenising preprocessor that writes Megatron indexed datasets, and the Megatron-Core
datasets that read them back (loss-masked and packed)."""
