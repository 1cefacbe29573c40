"""prepare --hf: Hugging Face datasets streamed from local files give the tokens of --input, --max_tokens
stops at its budget, and bad inputs are one line. Offline: nothing here downloads."""
import contextlib
import fcntl
import json
import os
import pathlib
import pty
import struct
import subprocess
import sys
import termios

# Read by datasets and huggingface_hub when they are imported: no test may reach the network.
os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

from aed_jax import prepare, tokenizer  # noqa: E402
from test_prepare import run_cli  # noqa: E402

pa = pytest.importorskip("pyarrow")  # installed with datasets
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("datasets")

REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ["the", "Ünï", "of", "42", "'s", "river", "and", "🙂", "was", "in", ",", "."]


def documents(n: int, seed: int = 0) -> list[str]:
    """Articles of a few paragraphs of a few lines each, like Wikipedia's text field."""
    rng = np.random.default_rng(seed)
    line = lambda: " ".join(rng.choice(WORDS, size=rng.integers(2, 20))).capitalize()
    return ["\n\n".join("\n".join(line() for _ in range(rng.integers(1, 4))) for _ in range(rng.integers(1, 4)))
            for _ in range(n)]


def write_jsonl(path: pathlib.Path, texts: list) -> str:
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return str(path)


def write_parquet(path: pathlib.Path, texts: list, row_group_size: int = 40) -> str:
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path, row_group_size=row_group_size)
    return str(path)


def files(out: pathlib.Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}


def tokens(path: pathlib.Path) -> list[int]:
    return np.fromfile(path, dtype=np.uint16).tolist()


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 1,000 characters, one process: many blocks, so the 90/10 cut falls inside one."""
    monkeypatch.setattr(prepare, "_BLOCK_CHARS", 1000)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})


@pytest.mark.parametrize("fmt", ["parquet", "json", "text"])
def test_local_files_give_the_tokens_of_input(fmt, tmp_path, small_blocks):
    texts = documents(150)
    jsonl = write_jsonl(tmp_path / "docs.jsonl", texts)
    run_cli(["--input", jsonl, "--field", "text", "--out", str(tmp_path / "input"), "--name", "wiki"])
    if fmt == "parquet":  # two files, read in path order, as --input reads a folder
        data_files = [write_parquet(tmp_path / "a.parquet", texts[:70]),
                      write_parquet(tmp_path / "b.parquet", texts[70:])]
    elif fmt == "json":
        data_files = [jsonl]
    else:  # a file per document: the text builder reads each file's paragraphs, joined back by a blank line
        (tmp_path / "txt").mkdir()
        data_files = [str(tmp_path / "txt" / f"{i:03d}.txt") for i in range(len(texts))]
        for path, text in zip(data_files, texts):
            pathlib.Path(path).write_text(text, encoding="utf-8")
    pattern = str(tmp_path / ("txt/*.txt" if fmt == "text" else f"*.{'jsonl' if fmt == 'json' else fmt}"))
    run_cli(["--hf", fmt, "--data_files", pattern, "--out", str(tmp_path / "hf"), "--name", "wiki"])
    ours, theirs = files(tmp_path / "hf"), files(tmp_path / "input")
    assert ours.keys() == theirs.keys() == {"meta.json", "wiki_train.bin", "wiki_val.bin"}
    for name in ("wiki_train.bin", "wiki_val.bin"):
        assert ours[name] == theirs[name], name
    meta, input_meta = json.loads(ours["meta.json"]), json.loads(theirs["meta.json"])
    assert meta.pop("source").startswith(f"Hugging Face dataset {fmt}, split 'train'")
    input_meta.pop("source")
    assert meta == input_meta  # chars, tokens and sha256 of each split


def test_max_tokens_stops_at_the_budget(tmp_path, small_blocks):
    texts = documents(400)
    data_file = write_parquet(tmp_path / "docs.parquet", texts)
    whole = prepare.SEPARATOR.join(texts)
    enc = tokenizer.get_encoding()
    assert len(enc.encode_ordinary(whole)) > 20_000
    for budget in (3_000, 12_345):
        out = tmp_path / str(budget)
        run_cli(["--hf", "parquet", "--data_files", data_file, "--max_tokens", str(budget), "--out", str(out)])
        meta = json.loads((out / "meta.json").read_text())
        chars = meta["train"]["chars"] + meta["val"]["chars"]
        corpus = whole[:chars]  # the documents up to a line start (a safe cut)...
        assert prepare._SAFE_CUT.match(whole, chars)
        assert budget - 100 < len(enc.encode_ordinary(corpus)) <= budget  # ...the last one within the budget
        assert tokens(out / f"{budget}_train.bin") == enc.encode_ordinary(corpus[:meta["train"]["chars"]])
        assert tokens(out / f"{budget}_val.bin") == enc.encode_ordinary(corpus[meta["train"]["chars"]:])
        assert meta["train"]["chars"] == int(chars * 0.9)
        assert f"first {budget:,} tokens" in meta["source"]


def test_stream_starts_workers_only_for_a_long_stream(monkeypatch):
    monkeypatch.setattr(prepare, "_BLOCK_CHARS", 10)
    blocks = [(0, "x" * 10)] * 20
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    workers, stream = prepare._stream_workers(iter(blocks))
    assert workers == 2 and list(stream) == blocks  # 8 blocks read ahead, then the rest
    workers, stream = prepare._stream_workers(iter(blocks[:7]))
    assert workers == 1 and list(stream) == blocks[:7]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    rest = iter(blocks)
    workers, stream = prepare._stream_workers(rest)
    assert workers == 1 and next(rest) == blocks[0]  # nothing read ahead
    assert len(list(stream)) == 19


def make_inputs(d: pathlib.Path) -> dict:
    return {"parquet": write_parquet(d / "docs.parquet", documents(30)),
            "jsonl": write_jsonl(d / "docs.jsonl", documents(30)),
            "nulls": write_jsonl(d / "nulls.jsonl", documents(2500) + [None] + documents(10)),
            "garbage": str(d / "garbage.parquet")}


BAD_INPUTS = {
    "no datasets": ([], "--hf needs the Hugging Face datasets library: pip install -e '.[hf]'"),
    "unreachable hub": (["--hf", "wikimedia/wikipedia", "--hf_config", "20231101.en"],
                        "--hf wikimedia/wikipedia: cannot reach the Hugging Face Hub"),
    "no --data_files": (["--hf", "parquet"], "--hf parquet reads local files: --data_files '' matches none"),
    "no file matches": (["--hf", "json", "--data_files", "{d}/*.json"], "--data_files '{d}/*.json' matches none"),
    "unknown field": (["--hf", "parquet", "--data_files", "{parquet}", "--field", "body"],
                      "--hf parquet: no field 'body'; its fields are id, text: name the text one with --field"),
    "unknown field, JSON": (["--hf", "json", "--data_files", "{jsonl}", "--field", "body"],
                            "--hf json: no field 'body'; its fields are id, text"),
    "not text": (["--hf", "parquet", "--data_files", "{parquet}", "--field", "id"],
                 "--hf parquet: field 'id' holds int, not text"),
    "a null midway": (["--hf", "json", "--data_files", "{nulls}"], "--hf json: field 'text' holds NoneType, not text"),
    "unknown split": (["--hf", "parquet", "--data_files", "{parquet}", "--hf_split", "validation"],
                      "--hf parquet: Bad split: validation"),
    "not parquet": (["--hf", "parquet", "--data_files", "{garbage}"], "--hf parquet: "),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_and_keeps_good_files(case, tmp_path, small_blocks, capsys, monkeypatch):
    inputs = make_inputs(tmp_path)
    pathlib.Path(inputs["garbage"]).write_text("not parquet\n" * 100)
    out = tmp_path / "out"
    run_cli(["--hf", "parquet", "--data_files", inputs["parquet"], "--out", str(out)])
    before = files(out)
    capsys.readouterr()
    argv, message = BAD_INPUTS[case]
    if case == "no datasets":
        monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
        argv = ["--hf", "parquet", "--data_files", inputs["parquet"]]
    with pytest.raises(SystemExit) as exit_info:
        run_cli([arg.format(d=tmp_path, **inputs) for arg in argv] + ["--out", str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message.format(d=tmp_path) in err, err
    assert files(out) == before  # and no hidden staging folder left


def test_command_line_progress_bar_and_summary(tmp_path):
    """From the shell: the bar (on a terminal) counts documents and tokens per second; piped, one summary line."""
    data_file = write_parquet(tmp_path / "docs.parquet", documents(200))
    command = [sys.executable, "-m", "aed_jax.prepare", "--hf", "parquet", "--data_files", data_file]
    terminal, terminal_end = pty.openpty()
    fcntl.ioctl(terminal_end, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # 120 columns
    shown = subprocess.run(command + ["--out", str(tmp_path / "a")], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=terminal_end, text=True)
    os.close(terminal_end)
    bar = b""
    with contextlib.suppress(OSError):  # EIO once everything written is read
        while chunk := os.read(terminal, 1 << 16):
            bar += chunk
    os.close(terminal)
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert shown.returncode == 0
    train, val = meta["train"]["tokens"], meta["val"]["tokens"]
    assert shown.stdout == f"{tmp_path / 'a'}: {train:,} train and {val:,} val tokens\n"
    assert "200 docs" in bar.decode() and "tok/s" in bar.decode(), bar


def test_help_describes_the_hf_flags():
    fv = flags.FlagValues()
    prepare.define_flags(fv)
    for name in ("hf", "hf_config", "hf_split", "data_files", "max_tokens"):
        assert fv[name].help, name
    assert "--hf" in fv["field"].help
