"""Task builders: raw logs → pre-training segments, SFT chat samples for the 8 RecIF-Bench tasks,
RL prompts with target item sets; user-level or leave-one-out splits without leakage."""
