"""RecIF-Bench runner (`megarec evaluate`): recommendation tasks by trie-constrained beam search, label
prediction by p(yes) of the first answer token, text tasks through a pluggable judge, general-domain
perplexity, results.json + report.md + plots, resumable per task."""
