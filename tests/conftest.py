"""Shared pytest fixtures: offline real Qwen3-layout tokenizer, one torch thread, free ports, CLI runner."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], *, nproc: int = 1, timeout: float = 600, env: dict | None = None, cwd: str | None = None):
    """Run `megarec ...` (under torchrun when nproc > 1); returns CompletedProcess with text output."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.update(env or {})
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "megarec",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "megarec", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or REPO)


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir(tmp_path_factory):
    """A real Qwen3-layout HF fast tokenizer built offline from the qwen.tiktoken ranks."""
    from megarec.tokenizer.qwen3_offline import build_qwen3_tokenizer

    out = tmp_path_factory.mktemp("qwen3_tokenizer")
    build_qwen3_tokenizer(str(out))
    return str(out)


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a test module (`pytestmark = pytest.mark.usefixtures("torch_one_thread")`): for
    tiny models, thread hand-offs cost more than they save."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def qwen3_tok(qwen3_tokenizer_dir):
    """The offline Qwen3-layout tokenizer loaded with transformers.AutoTokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(qwen3_tokenizer_dir)
