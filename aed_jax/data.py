"""Token files and the input pipeline: random training windows on grain, and evaluation passes.

A token file is a flat uint16 array (the seed's and nanoGPT's format), read through np.memmap, so
a batch costs only the pages it touches, whatever the file's size. A window at offset i is
x = data[i:i+T], y = data[i+1:i+T+1], as the seed and docs/model.md define it; random offsets are
uniform in [0, N - T - 1), as the seed draws them (so at least T + 2 tokens are needed to sample a
split at random).

A folder's token files change together or not at all: `commit_files` moves a complete new set in
through a commit folder, and `find_splits` finishes a move that a killed process left half done
before it looks, so no reader ever gets a new val file beside an old train file.
"""
from __future__ import annotations

import collections
import contextlib
import difflib
import glob
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from aed_jax import config as config_lib
from aed_jax import errors
from aed_jax import tasks

if TYPE_CHECKING:
    import grain

_CHECK_CHUNK = 1 << 24  # tokens per read when checking ids: 32 MiB at a time
_READ_THREADS = 2  # grain threads drawing training batches ahead of the trainer
_PREFETCH = 8  # training batches kept ready (50 x 200 int32 pairs are 80 kB each)
COMMIT = ".prepare-commit"  # a complete new set of files, still being moved into the folder beside it


class DataError(errors.UserError):
    """A user error in the data: the message is one line naming the file and the problem."""


def data_folder(config) -> str:
    """Where `config.dataset`'s token files live: `config.data_dir`, by default data/<dataset>."""
    return config.data_dir or os.path.join("data", config.dataset)


def find_splits(folder: str, name: str) -> tuple[str, str] | None:
    """The train and val token files of `name` in `folder`, or None if either is missing.

    Accepts the seed's names (<name>_train.bin, <name>_val.bin) or nanoGPT's (train.bin, val.bin).
    """
    finish_commit(folder)
    for prefix in (f"{name}_", ""):
        paths = tuple(os.path.join(folder, f"{prefix}{split}.bin") for split in ("train", "val"))
        if all(os.path.isfile(path) for path in paths):
            return paths
    return None


def split_paths(config) -> tuple[str, str]:
    """The train and val token files of `config.dataset` (see find_splits); if missing, a DataError
    saying which and the command that makes them."""
    folder = data_folder(config)
    paths = find_splits(folder, config.dataset)
    if paths is None:
        missing = os.path.join(folder, f"{config.dataset}_train.bin")
        if os.path.isfile(missing):
            missing = os.path.join(folder, f"{config.dataset}_val.bin")
        source = "--dataset wiki_vital" if config.dataset == "wiki_vital" else "--input YOUR_CORPUS"
        hf = "" if config.dataset == "wiki_vital" else " (or --hf DATASET in place of --input)"
        # A typo of a name that needs no files of the user's (the built-in corpus, a task) says which it meant.
        known = [config_lib.DEFAULT_DATASET] + [tasks.PREFIX + task for task in tasks.TASKS] + list(tasks.TASKS)
        close = difflib.get_close_matches(config.dataset, [k for k in known if k != config.dataset], n=1)
        meant = tasks.PREFIX + close[0] if close and close[0] in tasks.TASKS else close[0] if close else None
        raise DataError(f"{missing}: no such file; " + (f"did you mean --config.dataset={meant}? Else " if meant else "")
                        + f"make it with python -m aed_jax.prepare {source} --out {folder} --name {config.dataset}{hf}")
    return paths


def split_file(config, data: str | None, split: str) -> str:
    """The token file a reader means: the run's split, a split in the folder `data`, or the file `data`."""
    if data is None:
        if tasks.task_name(config.get("dataset", "")) is not None:
            raise DataError(f"{config.dataset} is a synthetic task, drawn afresh: it has no token files "
                                     "to read; pass --data FILE.bin")
        train_path, val_path = split_paths(config)
        return val_path if split == "val" else train_path
    if not os.path.isdir(data):
        return data  # a file: load_tokens checks it
    finish_commit(data)  # a prepare killed mid-commit: move the rest of its files in first
    for name in (f"{config.dataset}_{split}.bin", f"{split}.bin"):
        if os.path.isfile(os.path.join(data, name)):
            return os.path.join(data, name)
    found = sorted(glob.glob(os.path.join(glob.escape(data), f"*_{split}.bin")))
    if len(found) == 1:
        return found[0]
    raise DataError(f"{data}: no {split}.bin or <name>_{split}.bin here"
                             + (f" (several: {', '.join(map(os.path.basename, found))})" if found else ""))


def commit_files(staging: str, folder: str) -> None:
    """Moves every file of `staging` (a complete set written in a folder inside `folder`) into
    `folder`, all or none: renaming `staging` to COMMIT is the moment the new set counts as in
    place; whoever looks next (find_splits, or the next commit) finishes the move if this process
    dies during it. Synced to disk in that order, so a power cut keeps the same promise."""
    finish_commit(folder)
    _fsync(staging)
    os.rename(staging, os.path.join(folder, COMMIT))
    _fsync(folder)
    finish_commit(folder)


def finish_commit(folder: str) -> None:
    """Moves the rest of an interrupted commit's files into `folder`; nothing if there is none.
    Safe to run in several processes at once: a file another one moved first is skipped."""
    commit = os.path.join(folder, COMMIT)
    try:
        names = sorted(os.listdir(commit))
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.replace(os.path.join(commit, name), os.path.join(folder, name))
        _fsync(folder)
    except OSError as e:
        raise DataError(f"{commit}: new token files that an interrupted prepare left to move into {folder}, "
                        f"and moving them failed ({e.strerror}); run again with write access to {folder}") from None
    with contextlib.suppress(OSError):  # gone already, or a newer commit arrived: its writer finishes it
        os.rmdir(commit)


def _fsync(path: str) -> None:
    """Flushes a folder's entries (or a file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open(path: str, min_tokens: int) -> np.memmap:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    size = os.path.getsize(path)
    if size == 0:
        raise DataError(f"{path}: empty file")
    if size % 2:
        raise DataError(f"{path}: odd size ({size} bytes), so not a flat uint16 token file")
    if size // 2 < min_tokens:
        raise DataError(f"{path}: {size // 2} tokens, fewer than the {min_tokens} needed")
    return np.memmap(path, dtype=np.uint16, mode="r")


def load_tokens(path: str, alphabet_size: int, min_tokens: int) -> np.memmap:
    """The token file at `path`, memory-mapped, after checking it is a token file for this vocab.

    min_tokens: context_size + 1 for a pass of eval_windows, context_size + 2 to sample at random.
    Ids are checked chunk by chunk, so the check reads the file once in bounded memory.
    """
    tokens = _open(path, min_tokens)
    for start in range(0, len(tokens), _CHECK_CHUNK):
        chunk = tokens[start:start + _CHECK_CHUNK]
        if chunk.max() >= alphabet_size:
            at = start + int(np.argmax(chunk >= alphabet_size))
            raise DataError(f"{path}: token id {tokens[at]} at position {at} is not below the vocab size {alphabet_size}")
    return tokens


def _windows(tokens: np.ndarray, offsets_B: np.ndarray, context_size: int) -> dict[str, np.ndarray]:
    """{"x": data[i:i+T], "y": data[i+1:i+T+1]} for each offset i, as int32 [B, T]."""
    window_BxT1 = np.asarray(tokens[offsets_B[:, None] + np.arange(context_size + 1)], dtype=np.int32)
    return {"x": window_BxT1[:, :-1], "y": window_BxT1[:, 1:]}


def _random_offsets(rng: np.random.Generator, tokens: np.ndarray, context_size: int, batch_size: int) -> np.ndarray:
    high = len(tokens) - context_size - 1
    if high < 1:
        name = getattr(tokens, "filename", None) or "tokens"
        raise DataError(f"{name}: {len(tokens)} tokens, fewer than the {context_size + 2} needed to sample windows")
    return rng.integers(0, high, size=batch_size)


def train_iterator(path: str, context_size: int, batch_size: int, seed: int,
                   rows: slice = slice(None)) -> grain.DatasetIterator:
    """Random training batches {"x", "y"} (int32, `rows` of [batch_size, T]) forever, as a grain iterator.

    Batch k of the stream has its batch_size offsets drawn by np.random.default_rng((seed, k)): one
    global batch a step, whatever the number of processes; a process reads only its `rows` of it
    (mesh.process_slice), so the cluster's shape changes neither the batches nor the losses. Grain
    threads prepare batches ahead of the trainer.

    The iterator's state is {"next_index": k}, the same on every process: get_state() after some
    batches, then set_state() on a fresh iterator for the same path, size and seed (any `rows`),
    and it yields exactly the batches the first one would have yielded next. The checkpoint saves
    it, so a resumed run continues the same stream, on any number of processes.
    """
    tokens = _open(path, context_size + 2)

    def batch(k: int) -> dict[str, np.ndarray]:
        offsets = _random_offsets(np.random.default_rng((seed, k)), tokens, context_size, batch_size)
        return _windows(tokens, offsets[rows], context_size)

    return _stream(batch)


def task_iterator(config, batch_size: int, seed: int, rows: slice = slice(None)) -> grain.DatasetIterator:
    """A synthetic task's training batches {"x", "y", "weight"} (`rows` of [batch_size, T]) forever:
    train_iterator's stream, with batch k generated by `tasks.make_batch` from np.random.default_rng((seed, k))
    instead of read from a file. So it too is deterministic in (seed, step), the same global batch on
    any number of processes, and resumed exactly from its {"next_index": k} state."""
    def batch(k: int) -> dict[str, np.ndarray]:
        return {name: a[rows] for name, a in tasks.make_batch(config, np.random.default_rng((seed, k)), batch_size).items()}

    return _stream(batch)


def _stream(batch) -> grain.DatasetIterator:
    """batch(0), batch(1), ... as a checkpointable grain iterator, prepared ahead by grain threads."""
    import grain  # here only: prepare's worker processes import this module, and grain brings jax (150 MB each)

    read_options = grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_PREFETCH)
    return iter(grain.MapDataset.range(sys.maxsize).map(batch).to_iter_dataset(read_options))


def random_batches(tokens: np.ndarray, context_size: int, batch_size: int, num_batches: int,
                   seed, rows: slice = slice(None)) -> Iterator[dict[str, np.ndarray]]:
    """num_batches random batches drawn as the seed's loss estimation draws them; fixed by `seed`.
    Each process reads its `rows` of the same batches, as train_iterator's do."""
    rng = np.random.default_rng(seed)
    for _ in range(num_batches):
        yield _windows(tokens, _random_offsets(rng, tokens, context_size, batch_size)[rows], context_size)


def task_batches(config, batch_size: int, num_batches: int, seed,
                 rows: slice = slice(None)) -> Iterator[dict[str, np.ndarray]]:
    """num_batches batches of a synthetic task, {"x", "y", "weight"}, fixed by `seed` (random_batches'
    counterpart: a task has no split to draw from, only fresh sequences)."""
    rng = np.random.default_rng(seed)
    for _ in range(num_batches):
        yield {name: a[rows] for name, a in tasks.make_batch(config, rng, batch_size).items()}


def eval_windows(tokens: np.ndarray, context_size: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every non-overlapping window, at offsets 0, T, 2T, ... while i + T + 1 <= N, in order and in
    batches of batch_size (the last may be smaller): a deterministic pass over a whole split."""
    return windows_at(tokens, np.arange(0, len(tokens) - context_size, context_size), context_size, batch_size)


def sample_offsets(tokens: np.ndarray, context_size: int, count: int, seed: int) -> np.ndarray:
    """`count` window starts drawn uniformly at random, with replacement, as the estimates draw theirs:
    a sample of a split's windows fixed by `seed` (the same for every run given the same file)."""
    return _random_offsets(np.random.default_rng(seed), tokens, context_size, count)


def windows_at(tokens: np.ndarray, offsets: np.ndarray, context_size: int,
               batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The windows at `offsets`, in order, in batches of batch_size (the last may be smaller)."""
    for start in range(0, len(offsets), batch_size):
        yield _windows(tokens, offsets[start:start + batch_size], context_size)


class DevicePrefetch:
    """Keeps `size` batches already sent to their devices (transfers are asynchronous), so a step
    never waits on a host-to-device copy. Its checkpointable state (what the checkpoint
    saves) is the state before the next batch it will yield, not after the ones it holds ahead, so
    a resumed run sees exactly the stream a straight run sees."""

    def __init__(self, iterator, to_device, size: int = 2):
        self.iterator, self.to_device, self.size, self.queue = iterator, to_device, size, collections.deque()

    def __iter__(self):
        return self

    def __next__(self):
        while len(self.queue) < self.size:
            state = self.iterator.get_state()
            self.queue.append((state, self.to_device(next(self.iterator))))
        return self.queue.popleft()[1]

    def get_state(self) -> dict:
        return dict(self.queue[0][0] if self.queue else self.iterator.get_state())

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)
        self.queue.clear()
