"""Post-training models: each owns its forward pass and loss (NeMo-Aligner style).

`PolicyModel` is trainable (FSDP2 when several processes run); `ReferenceModel` and `TeacherModel` are
frozen and only give log-probs; `losses` holds the token-level objectives and `logprobs` the shared
log-probability arithmetic (temperature, constraint masks)."""
