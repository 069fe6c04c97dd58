"""Run-time download cache for public data ($MEGAREC_CACHE or ~/.cache/megarec); nothing is committed."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile

from megarec.common.errors import MegarecError


def cache_root(cache_dir: str | None = None) -> str:
    """`cache_dir`, else $MEGAREC_CACHE, else ~/.cache/megarec."""
    if cache_dir:
        return cache_dir
    return os.environ.get("MEGAREC_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "megarec")


def pip_download_wheel(requirement: str, dest: str) -> str:
    """Download one wheel (no dependencies) with the ordinary pip client; returns its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        requirement,
        "-d",
        dest,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(glob.glob(os.path.join(dest, "*.whl")))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
        raise MegarecError(f"could not download {requirement} with pip: {' | '.join(tail) or 'no wheel produced'}")
    return wheels[-1]


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)
