"""`megarec doctor gpu`: a few-minute GPU acceptance check of the product paths.

One command, run unattended on a node with one or more GPUs, launches the real `megarec` verbs as
subprocesses (tokenizer, init-model, convert, pretrain — under torchrun for the multi-GPU checks) plus one
THD probe built from megarec's own model and batch code, and prints one JSON summary with pass / fail / skip
per check, the measured numbers and the tolerance each was held to.

Modules, one concern each:
  device   what GPU this is (probed in a subprocess) and the pure rules that depend on it
  plan     the exact `megarec` command lines every check runs
  curves   reading metrics.jsonl and the tolerance comparisons
  runner   subprocesses with logs, heartbeats and per-check deadlines
  checks   the checks themselves
  summary  result records, verdict, exit code, the JSON line
  thd_probe  the subprocess behind the THD check
  cli      `megarec doctor gpu` argument handling and orchestration
"""
