"""The CPU compatibility shims for Megatron-Core (run in a subprocess: they patch torch globally)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="shims are inactive with CUDA")
def test_shims_route_cuda_to_cpu_and_track_rng():
    out = _run("""
        import torch
        from megarec.runtime import cpu_shims
        assert cpu_shims.needed() and not cpu_shims.is_enabled()
        assert cpu_shims.enable() and cpu_shims.enable()          # idempotent
        t = torch.zeros(3, device="cuda")
        assert t.device.type == "cpu" and t.cuda() is t and t.to("cuda:0").device.type == "cpu"
        assert t.type() == "torch.cuda.FloatTensor"
        assert torch.cuda.current_device() == torch.device("cpu")
        torch.cuda.synchronize(); torch.cuda.current_stream().wait_stream(None)
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker
        tracker = get_cuda_rng_tracker()
        tracker.add("model-parallel-rng", 7)
        torch.manual_seed(0); before = torch.get_rng_state()
        with tracker.fork():
            a = torch.rand(4)
        assert torch.equal(torch.get_rng_state(), before)       # default stream untouched
        with tracker.fork():
            b = torch.rand(4)
        assert not torch.equal(a, b)                              # the forked stream advances
        saved = tracker.get_states()
        with tracker.fork():
            c = torch.rand(4)
        tracker.set_states(saved)
        with tracker.fork():
            assert torch.equal(torch.rand(4), c)                  # states round-trip (checkpoint resume)
        print("OK")
    """)
    assert out.strip() == "OK"


def test_shims_do_nothing_when_cuda_present():
    out = _run("""
        import torch
        torch.cuda.is_available = lambda: True
        from megarec.runtime import cpu_shims
        assert not cpu_shims.needed() and cpu_shims.enable() is False and not cpu_shims.is_enabled()
        print(torch.zeros(1).type())
    """)
    assert out.strip() == "torch.FloatTensor"
