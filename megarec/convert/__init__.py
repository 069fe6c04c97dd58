"""Checkpoint conversion between Hugging Face Qwen3 and Megatron-Core dist checkpoints.

`mapping` holds the one declarative name/transform table used in both directions; `hf_io` reads and
writes HF checkpoint directories; `importer`, `exporter` and `verify` implement
`megarec convert hf-to-mcore | mcore-to-hf | verify`.
"""
