"""Megatron-Core pre-training engine: stage 1 (itemic alignment) and stage 2 (co-pretraining)."""
