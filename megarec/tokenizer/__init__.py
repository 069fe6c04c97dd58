"""Text tokenizers: an offline Qwen3-layout HF tokenizer built from public BPE ranks."""

from megarec.tokenizer.qwen3_offline import build_qwen3_tokenizer, ensure_qwen_tiktoken

__all__ = ["build_qwen3_tokenizer", "ensure_qwen_tiktoken"]
