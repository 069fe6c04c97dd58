#!/usr/bin/env python
"""Convert Qwen3 checkpoints between HF and Megatron-Core (same as `megarec convert ...`).

python tools/convert_checkpoint.py hf-to-mcore --hf-dir H --out M --tp 2 --pp 2
python tools/convert_checkpoint.py mcore-to-hf --mcore-dir M --out H2
torchrun --nproc_per_node 4 tools/convert_checkpoint.py verify --hf-dir H --mcore-dir M --tp 2 --pp 2
"""

import sys

from megarec.cli import main

if __name__ == "__main__":
    main(["convert", *sys.argv[1:]])
