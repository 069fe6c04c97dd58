"""`megarec demo`: the whole pipeline on MovieLens-100k at CPU scale, stage by stage, with a report."""
