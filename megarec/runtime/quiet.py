"""Megatron-Core's import-time chatter, reduced to one line.

Without Transformer Engine and apex (every CPU machine), importing Megatron-Core emits six UserWarnings that
it falls back to PyTorch implementations, on every run and every rank, and every checkpoint load adds two
deprecation warnings of Megatron-Core's own use of torch.distributed.checkpoint. `install()` filters exactly
those warnings (by message; every other warning still shows) and says once, on rank 0, which optional GPU
packages are absent. `install_on_megatron_import()` arranges for `install()` to run when
`megatron` is first imported, wherever that import happens, so the filters are in place before its modules
run and nothing is said by the verbs that never import it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

OPTIONAL_GPU_PACKAGES = ("transformer_engine", "apex")
# The messages of Megatron-Core 0.16's fallback warnings ("Transformer Engine and Apex are not installed.
# Falling back to ...", "Apex is not installed. Falling back to Torch Norm").
_FALLBACK_MESSAGES = (r"Transformer Engine and Apex are not installed", r"Apex is not installed")
# Deprecations inside Megatron-Core 0.16's own use of torch.distributed.checkpoint, printed at every checkpoint
# load; nothing a megarec user can act on.
_INTERNAL_DEPRECATIONS = (r"`load_state_dict` is deprecated", r"Please use DTensor instead and we are deprecating")

_state = {"installed": False}


def missing_gpu_packages() -> list[str]:
    return [name for name in OPTIONAL_GPU_PACKAGES if importlib.util.find_spec(name) is None]


def _is_rank0() -> bool:
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    return rank == "0"


def install() -> None:
    """Filter Megatron-Core's fallback warnings and announce the absent packages (once per process)."""
    if _state["installed"]:
        return
    _state["installed"] = True
    for message in _FALLBACK_MESSAGES:
        warnings.filterwarnings("ignore", message=message, category=UserWarning, module=r"megatron")
    for message in _INTERNAL_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    missing = missing_gpu_packages()
    if missing and _is_rank0():
        print(
            f"megarec: optional GPU packages not installed: {', '.join(missing)} "
            "(Megatron-Core uses its PyTorch fallbacks)",
            flush=True,
        )


class _MegatronImportHook:
    """A meta-path entry that finds nothing: it only notices the first `import megatron`."""

    def find_spec(self, name, path=None, target=None):
        if name == "megatron" or name.startswith("megatron."):
            remove_hook()
            install()
        return None


_hook = _MegatronImportHook()


def remove_hook() -> None:
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def install_on_megatron_import() -> None:
    """Run `install()` when megatron is first imported (at once if it already is)."""
    if "megatron" in sys.modules:
        install()
    elif _hook not in sys.meta_path and not _state["installed"]:
        sys.meta_path.insert(0, _hook)
