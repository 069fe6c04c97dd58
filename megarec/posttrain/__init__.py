"""Post-training on Hugging Face checkpoints: SFT, on-policy distillation and Rec-RL (GRPO).

Layout follows NeMo-Aligner's split (implemented here; NeMo-Aligner itself is archived):
``models/`` own the forward pass and the losses (a trainable policy around an HF causal LM, frozen
reference / teacher models that only give log-probs), ``algorithms/`` own the loops (one shared skeleton
for stepping, validation, checkpoint/resume and metrics; SFT, distillation and GRPO plug into it).
Multi-process runs shard the policy with PyTorch FSDP2 (``fully_shard``); CPU runs use gloo and fp32,
GPU runs NCCL and bf16 compute with fp32 master weights.
"""
