"""Scaling laws: fit L(N, D) = E + A/N^α + B/D^β to training runs (Hoffmann et al. 2022, approach 3) and
plan compute-optimal model/data sizes for a FLOP budget."""
