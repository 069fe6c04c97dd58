"""Qwen3 architectures on Megatron-Core: presets, TransformerConfig construction, layer specs."""
