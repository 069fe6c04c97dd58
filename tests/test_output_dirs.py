"""Every verb that writes a directory refuses a foreign non-empty output (exit 2, one line naming it and
--force) and leaves it byte-identical; `--out .`, an ancestor of the cwd and an input are refused even with
--force; resumable verbs accept their own earlier output; --force replaces only after a successful run."""

from __future__ import annotations

import os

import pytest

from megarec.common.errors import ConfigError
from megarec.common.outdir import check_out_dir, refuse_unsafe, staged_dir

from conftest import run_cli

POSTTRAIN = ("sft", "distill", "grpo")

# verb label -> argv with OUT as the output argument and IN as a (never read) input path
VERBS = {
    "tokenizer build-qwen3": lambda out, inp: ["tokenizer", "build-qwen3", "--out", out, "--tiktoken", inp],
    "init-model": lambda out, inp: ["init-model", "--tokenizer", inp, "--out", out],
    "itemic train": lambda out, inp: ["itemic", "train", "--embeddings", inp, "--out", out],
    "expand-vocab": lambda out, inp: [
        "expand-vocab",
        "--hf-dir",
        inp,
        "--out",
        out,
        "--layers",
        "2",
        "--codebook-size",
        "4",
    ],
    "convert hf-to-mcore": lambda out, inp: ["convert", "hf-to-mcore", "--hf-dir", inp, "--out", out],
    "convert mcore-to-hf": lambda out, inp: ["convert", "mcore-to-hf", "--mcore-dir", inp, "--out", out],
    "data build": lambda out, inp: ["data", "build", "--source", "synthetic", "--out", out],
    "data dedup": lambda out, inp: ["data", "dedup", "--train", inp, "--eval", inp, "--out", out],
    "preprocess": lambda out, inp: ["preprocess", "--input", inp, "--tokenizer", inp, "--output-prefix", out],
    "evaluate": lambda out, inp: ["evaluate", "--hf-dir", inp, "--data", inp, "--out", out],
    "bench seqrec": lambda out, inp: ["bench", "seqrec", "--dataset", "synthetic", "--baselines", "pop", "--out", out],
    "scaling fit": lambda out, inp: ["scaling", "fit", "--runs", inp, "--out", out],
    "demo": lambda out, inp: ["demo", "--profile", "ci", "--out", out],
    **{
        verb: (lambda v: lambda out, inp: [v, f"model.path={inp}", f"checkpoint.output={out}"])(verb)
        for verb in POSTTRAIN
    },
}


def _foreign(path) -> dict:
    """A directory megarec did not write: an unrelated file and a subfolder; returns its snapshot."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_bytes(b"not megarec's\n")
    (path / "sub" / "data.bin").write_bytes(bytes(range(256)))
    return _snapshot(path)


def _snapshot(root) -> dict:
    """relative path -> bytes (None for directories), for every entry under `root`."""
    snap = {}
    for d, dirs, files in os.walk(root):
        for name in dirs:
            snap[os.path.relpath(os.path.join(d, name), root)] = None
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                snap[os.path.relpath(os.path.join(d, name), root)] = f.read()
    return snap


def _one_error_line(proc, verb: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    prefix = f"megarec {verb.split()[0]}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix) :]


def _target(verb: str, tmp_path):
    """(output argument, directory the verb writes) — preprocess writes its work directory P.parts."""
    if verb == "preprocess":
        return str(tmp_path / "x"), tmp_path / "x.parts"
    return str(tmp_path / "out"), tmp_path / "out"


@pytest.mark.parametrize("verb", list(VERBS))
def test_foreign_non_empty_output_is_refused_and_kept(verb, tmp_path):
    arg, out = _target(verb, tmp_path)
    before = _foreign(out)
    msg = _one_error_line(run_cli(VERBS[verb](arg, str(tmp_path / "in")), timeout=120), verb)
    if verb in POSTTRAIN:
        assert msg == (
            f"checkpoint.output {out} is not empty (2 entries); point checkpoint.output at a new or empty directory"
        )
    else:
        flag = "--output-prefix work directory" if verb == "preprocess" else "--out"
        assert msg.startswith(f"{flag} {out} is not empty (2 entries); pass --force to "), msg
    assert _snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == sorted({"out", "x.parts"} & set(os.listdir(tmp_path)))


@pytest.mark.parametrize("verb", list(VERBS))
def test_output_in_current_directory_is_refused(verb, tmp_path):
    cwd = tmp_path / "work"
    before = _foreign(cwd)
    proc = run_cli(VERBS[verb](".", "in") + ["--force"] * (verb not in POSTTRAIN), cwd=str(cwd), timeout=120)
    flag = {"preprocess": "--output-prefix"}.get(verb, "checkpoint.output" if verb in POSTTRAIN else "--out")
    assert _one_error_line(proc, verb) == (f"{flag} . is the current directory; give a new directory for the output")
    assert _snapshot(cwd) == before


def test_ancestor_of_cwd_and_inputs_are_refused_even_with_force(tmp_path):
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    proc = run_cli(VERBS["expand-vocab"]("..", "base") + ["--force"], cwd=str(cwd), timeout=60)
    assert _one_error_line(proc, "expand-vocab") == (
        "--out .. is an ancestor of the current directory; give a new directory for the output"
    )
    base = tmp_path / "base"
    before = _foreign(base)
    proc = run_cli(VERBS["expand-vocab"](str(base), str(base)) + ["--force"], timeout=60)
    assert _one_error_line(proc, "expand-vocab") == (
        f"--out {base} is the same path as --hf-dir {base}; give a separate output directory"
    )
    proc = run_cli(VERBS["convert hf-to-mcore"](str(tmp_path), str(base)) + ["--force"], timeout=60)
    assert _one_error_line(proc, "convert") == (
        f"--out {tmp_path} is a directory containing --hf-dir {base}; give a separate output directory"
    )
    assert _snapshot(base) == before


@pytest.mark.parametrize(
    "verb,marker,later_error",
    [
        ("demo", ".stages", "unknown stage 'nope'"),
        ("evaluate", "tasks", "not found"),
        ("preprocess", "manifest.json", "not found"),
        ("sft", "config.json", "data.sources is empty"),
    ],
)
def test_resumable_verbs_accept_their_own_output(verb, marker, later_error, tmp_path):
    arg, out = _target(verb, tmp_path)
    before = _foreign(out)
    (out / marker).mkdir() if marker in (".stages", "tasks") else (out / marker).write_text("{}")
    argv = VERBS[verb](arg, str(tmp_path / "in")) + (["--until", "nope"] if verb == "demo" else [])
    msg = _one_error_line(run_cli(argv, timeout=120), verb)
    assert later_error in msg and "not empty" not in msg
    assert {k: v for k, v in _snapshot(out).items() if not k.startswith(marker)} == before


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    import posttrain_tiny as tiny

    d = tmp_path_factory.mktemp("outguard")
    tiny.build_tokenizer(str(d / "tok"))
    tiny.build_model(str(d / "base"), str(d / "tok"), seed=0)
    return d / "base"


def test_expand_vocab_force_replaces_only_after_success(tiny_base, tmp_path):
    out = tmp_path / "expanded"
    before = _foreign(out)
    argv = ["expand-vocab", "--hf-dir", str(tiny_base), "--out", str(out), "--layers", "2", "--codebook-size", "4"]
    msg = _one_error_line(run_cli(argv, timeout=300), "expand-vocab")
    assert msg == f"--out {out} is not empty (2 entries); pass --force to replace it"
    assert _snapshot(out) == before

    # --force, but the run fails (before and after loading the model): the old directory is untouched and
    # nothing is left beside it
    res = run_cli(
        [
            "expand-vocab",
            "--hf-dir",
            str(tmp_path / "other"),
            "--out",
            str(out),
            "--layers",
            "2",
            "--codebook-size",
            "4",
            "--force",
        ],
        timeout=300,
    )
    assert "config.json: not found" in _one_error_line(res, "expand-vocab")
    first = tmp_path / "first"
    assert run_cli(argv[:4] + [str(first)] + argv[5:], timeout=300).returncode == 0
    res = run_cli(
        ["expand-vocab", "--hf-dir", str(first), "--out", str(out), "--layers", "2", "--codebook-size", "4", "--force"],
        timeout=300,
    )
    assert res.returncode == 2 and "already contains <s_a_0>" in res.stderr.splitlines()[-1]  # after a model load
    assert _snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["expanded", "first"]

    # --force and a successful run: the old content is gone, replaced by exactly the expanded checkpoint
    res = run_cli(argv + ["--force"], timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(os.listdir(out)) == sorted(os.listdir(first))
    assert "itemic.json" in os.listdir(out) and "notes.txt" not in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["expanded", "first"]


# ------------------------------------------------------------------------------- the guard, in process
def test_check_out_dir_messages(tmp_path):
    assert check_out_dir(tmp_path / "new") == str(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / ".hidden").write_text("x")
    with pytest.raises(ConfigError) as e:
        check_out_dir(tmp_path / "one", flag="--dir")
    assert str(e.value) == f"--dir {tmp_path / 'one'} is not empty (1 entry); pass --force to replace it"
    check_out_dir(tmp_path / "one", force=True)
    check_out_dir(tmp_path / "one", own=lambda p: os.path.exists(os.path.join(p, ".hidden")))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        check_out_dir(tmp_path / "file", force=True)


def test_refuse_unsafe_paths(tmp_path, monkeypatch):
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    for path in (".", "./", str(tmp_path / "w")):
        with pytest.raises(ConfigError, match="is the current directory"):
            refuse_unsafe(path)
    for path in ("..", str(tmp_path), "/"):
        with pytest.raises(ConfigError, match="is an ancestor of the current directory"):
            refuse_unsafe(path)
    with pytest.raises(ConfigError, match="is a directory containing --in"):
        refuse_unsafe(tmp_path / "x", inputs=[("--in", str(tmp_path / "x" / "y" / "f.txt"))])
    refuse_unsafe(tmp_path / "x" / "y", inputs=[("--in", str(tmp_path / "x")), ("--none", None)])
    os.symlink(tmp_path / "w", tmp_path / "link")
    with pytest.raises(ConfigError, match="is the current directory"):
        refuse_unsafe(tmp_path / "link")


def test_staged_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "out"
    before = _foreign(out)
    with pytest.raises(ConfigError, match="is not empty"):
        with staged_dir(out):
            pass
    with pytest.raises(RuntimeError, match="boom"):
        with staged_dir(out, force=True) as stage:
            open(os.path.join(stage, "half.txt"), "w").close()
            raise RuntimeError("boom")
    assert _snapshot(out) == before and os.listdir(tmp_path) == ["out"]
    with staged_dir(out, force=True) as stage:
        assert not os.path.exists(os.path.join(stage, "notes.txt"))
        open(os.path.join(stage, "new.txt"), "w").close()
        assert _snapshot(out) == before  # replaced only when the block ends
    assert _snapshot(out) == {"new.txt": b""} and os.listdir(tmp_path) == ["out"]
    with pytest.raises(ConfigError, match="is not empty"):  # something appeared meanwhile, no --force
        with staged_dir(tmp_path / "late") as stage:
            (tmp_path / "late").mkdir()
            (tmp_path / "late" / "other.txt").write_text("x")
    assert _snapshot(tmp_path / "late") == {"other.txt": b"x"} and sorted(os.listdir(tmp_path)) == ["late", "out"]
