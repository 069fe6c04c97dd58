"""megarec: Megatron-Core training stack for generative recommendation with Qwen3 and itemic tokens."""

__version__ = "0.1.0"
