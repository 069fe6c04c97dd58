"""Post-training algorithms: one loop skeleton (`base.Trainer`) and the three stages that plug into it —
`SFTTrainer`, `OnPolicyDistillationTrainer`, `GRPOTrainer`."""
