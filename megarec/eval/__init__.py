"""Evaluation: ranking metrics, the sequential-recommendation transfer benchmark, baselines and the
RecIF-Bench runner (`megarec evaluate`, `megarec bench seqrec`)."""
