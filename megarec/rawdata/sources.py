"""`--source` names → RecLog loaders: synthetic, ml-100k, amazon:<dir>, raw:<dir> (schema JSONL/parquet)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Optional

from megarec.common.errors import ConfigError, DataError
from megarec.rawdata.schema import RecLog, load_reclog


@dataclass
class SourceResult:
    log: RecLog
    codes: Optional[dict]  # item codes the source provides (synthetic), else None
    default_split: str  # "user" or "loo"


def load_source(
    spec: str,
    *,
    seed: int = 0,
    num_users: int | None = None,
    num_items: int | None = None,
    cache_dir: str | None = None,
    on_error: str = "fail",
) -> SourceResult:
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        from megarec.rawdata.synthetic import SyntheticConfig, generate_synthetic

        cfg = SyntheticConfig(seed=seed)
        if num_users:
            cfg.num_users = num_users
        if num_items:
            cfg.num_items = num_items
        log, codes = generate_synthetic(cfg)
        return SourceResult(log, codes, "user")
    if kind in ("ml-100k", "movielens"):
        from megarec.rawdata.movielens import load_ml100k

        return SourceResult(load_ml100k(arg or None, cache_dir=cache_dir, on_error=on_error), None, "loo")
    if kind == "amazon":
        if not arg:
            raise ConfigError("--source amazon:<dir> needs a directory")
        from megarec.rawdata.amazon import load_amazon

        return SourceResult(load_amazon(arg, on_error=on_error), None, "loo")
    if kind == "raw":
        if not arg:
            raise ConfigError("--source raw:<dir> needs a directory with items.* and users.*")
        return SourceResult(load_reclog(_one(arg, "items"), _one(arg, "users"), on_error=on_error), None, "user")
    raise ConfigError(f"unknown --source {spec!r}: use synthetic, ml-100k, amazon:<dir> or raw:<dir>")


def _one(directory: str, stem: str) -> str:
    found = sorted(glob.glob(os.path.join(directory, f"{stem}.*")))
    found = [f for f in found if f.endswith((".jsonl", ".json", ".jsonl.gz", ".parquet"))]
    if len(found) != 1:
        raise DataError(f"{directory}: expected exactly one {stem}.jsonl/.parquet file, found {len(found)}")
    return found[0]
