#!/usr/bin/env python
"""Build the offline Qwen3-layout HF tokenizer (same as `megarec tokenizer build-qwen3`)."""

import argparse
import sys

from megarec.common.errors import MegarecError
from megarec.common.outdir import FORCE_HELP
from megarec.tokenizer.qwen3_offline import build_qwen3_tokenizer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, help="Output directory (created if missing; must be empty unless --force).")
    ap.add_argument("--tiktoken", default=None, help="Local qwen.tiktoken; default: fetch from the dashscope wheel.")
    ap.add_argument("--cache-dir", default=None, help="Cache dir (default: $MEGAREC_CACHE or ~/.cache/megarec).")
    ap.add_argument("--force", action="store_true", help=FORCE_HELP)
    args = ap.parse_args()
    try:
        print(build_qwen3_tokenizer(args.out, args.tiktoken, cache_dir=args.cache_dir, force=args.force))
    except MegarecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
