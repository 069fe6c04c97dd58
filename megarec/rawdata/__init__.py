"""Sources of raw recommendation logs: synthetic generator, MovieLens-100k (from the recbole wheel),
Amazon review dumps, and schema JSONL/parquet directories. `load_source(spec)` picks one by name."""
