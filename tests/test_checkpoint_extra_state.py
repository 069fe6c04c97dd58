"""Loading a checkpoint written without Transformer Engine (a `convert hf-to-mcore` output, a local-spec run)
into a model whose modules carry TE-style extra state: TE's core attention keeps FP8 scaling metadata in an
`_extra_state` entry that the local spec's attention has no counterpart for. Only those missing entries are
tolerated, and it is said once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from megatron.core.models.gpt import GPTModel
    from megarec.models.qwen3 import builder as qwen3
    from megarec.models.config import ModelConfig
    from megarec.runtime.config import ParallelConfig
    from megarec.models.qwen3.specs import get_layer_spec
    from megarec.runtime import megatron_checkpoint as ckpt
    from megarec.runtime.megatron_parallel import init_megatron

    from megarec.models.sdpa_attention import SDPACoreAttention

    class AttentionWithExtraState(SDPACoreAttention):
        # Like TEDotProductAttention: an `_extra_state` state-dict entry (FP8 metadata).
        def get_extra_state(self):
            return torch.tensor([3.0])

        def set_extra_state(self, state):
            self.restored_extra_state = state

    init_megatron(ParallelConfig(), seed=0)
    arch = qwen3.resolve_arch(ModelConfig(preset="qwen3-tiny"))
    tconfig = qwen3.build_transformer_config(arch, ModelConfig(), ParallelConfig(), "local")

    def build(spec):
        return GPTModel(config=tconfig, transformer_layer_spec=spec, vocab_size=1024, max_sequence_length=64,
                        share_embeddings_and_output_weights=False, position_embedding_type="rope")

    plain = build(get_layer_spec("local"))
    root = sys.argv[1]
    ckpt.save_checkpoint(root, 0, [plain], None, None, 0, 1024, None)
    spec = get_layer_spec("local")
    spec.submodules.self_attention.submodules.core_attention = AttentionWithExtraState
    with_extra = build(spec)
    assert any(k.endswith("_extra_state") for k in with_extra.state_dict())
    mode = sys.argv[2]
    if mode == "weights":
        ckpt.load_model_weights(root, [with_extra])
    else:
        state = ckpt.load_checkpoint(root, [with_extra])
        assert not state.optimizer_loaded
    loaded = with_extra.state_dict()
    for name, a in plain.state_dict().items():
        if isinstance(a, torch.Tensor) and not name.endswith("_extra_state"):
            assert torch.equal(a, loaded[name]), name
    print("loaded-equal")
""")


def _run(tmp_path, mode):
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / mode), mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )


def test_converted_checkpoint_loads_into_a_model_with_extra_state(tmp_path):
    for mode in ("weights", "resume"):
        proc = _run(tmp_path, mode)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.splitlines()[-1] == "loaded-equal"
        notes = [line for line in proc.stdout.splitlines() if "no Transformer Engine extra state" in line]
        assert len(notes) == 1, proc.stdout  # said once, naming how many modules start fresh
        assert "for 1 modules" in notes[0] and "core_attention._extra_state" in notes[0]
