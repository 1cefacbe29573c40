"""Token files and windows, checked against direct numpy indexing.

The test files hold tokens[i] = i, so a window's first x token is its offset.
"""
import json
import os

import numpy as np
import pytest

from aed_jax import config as config_lib
from aed_jax import data

T, B = 8, 4


def token_file(path, n: int) -> str:
    """A token file written as nanoGPT writes one, holding 0, 1, ..., n - 1."""
    np.arange(n, dtype=np.uint16).tofile(path)
    return str(path)


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def check_windows(batch: dict, n: int, rows: int) -> np.ndarray:
    """Shapes, dtype, the one-token shift and the offset range [0, n - T - 1); returns the offsets."""
    x, y = batch["x"], batch["y"]
    assert x.shape == y.shape == (rows, T) and x.dtype == y.dtype == np.int32
    offsets = x[:, 0]
    np.testing.assert_array_equal(x, offsets[:, None] + np.arange(T))  # x = data[i:i+T]
    np.testing.assert_array_equal(y, x + 1)  # y = data[i+1:i+T+1]
    assert offsets.min() >= 0 and offsets.max() < n - T - 1
    return offsets


def test_train_windows(tmp_path):
    n = 1000
    iterator = data.train_iterator(token_file(tmp_path / "t.bin", n), T, B, seed=0)
    for batch in take(iterator, 20):
        check_windows(batch, n, B)


def test_train_offsets_cover_exactly_the_seeds_range(tmp_path):
    n = T + 5  # offsets 0..3: the last window ends at data[N - 2], as the seed's randint(N - T - 1) gives
    iterator = data.train_iterator(token_file(tmp_path / "t.bin", n), T, 16, seed=0)
    offsets = np.concatenate([check_windows(batch, n, 16) for batch in take(iterator, 10)])
    assert set(offsets) == {0, 1, 2, 3}


def test_train_stream_is_fixed_by_seed(tmp_path):
    path = token_file(tmp_path / "t.bin", 10_000)
    first, again, other = (take(data.train_iterator(path, T, B, seed=s), 5) for s in (7, 7, 8))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["x"], b["x"])
    assert not all(np.array_equal(a["x"], b["x"]) for a, b in zip(first, other))


def test_processes_read_their_rows_of_one_global_batch(tmp_path):
    """Process p of P reads rows [p B/P, (p+1) B/P) of the one-process batch, at every step: the
    stream does not depend on the number of processes."""
    path = token_file(tmp_path / "t.bin", 10_000)
    single = take(data.train_iterator(path, T, B, seed=3), 3)
    p0, p1 = (take(data.train_iterator(path, T, B, seed=3, rows=slice(p * B // 2, (p + 1) * B // 2)), 3) for p in (0, 1))
    for k, batch in enumerate(single):
        for name in ("x", "y"):
            np.testing.assert_array_equal(batch[name], np.concatenate([p0[k][name], p1[k][name]]))
    assert not np.array_equal(p0[0]["x"], p1[0]["x"])


def test_state_resumes_the_same_stream(tmp_path):
    path = token_file(tmp_path / "t.bin", 10_000)
    iterator = data.train_iterator(path, T, B, seed=1)
    take(iterator, 3)
    state = json.loads(json.dumps(iterator.get_state()))  # what grain's checkpoint handler stores
    expected = take(iterator, 4)
    resumed = data.train_iterator(path, T, B, seed=1)
    resumed.set_state(state)
    for a, b in zip(take(resumed, 4), expected):
        np.testing.assert_array_equal(a["x"], b["x"])
        np.testing.assert_array_equal(a["y"], b["y"])


def test_random_batches(tmp_path):
    n = 500
    tokens = data.load_tokens(token_file(tmp_path / "t.bin", n), alphabet_size=50257, min_tokens=T + 2)
    batches = list(data.random_batches(tokens, T, B, num_batches=5, seed=4))
    assert len(batches) == 5
    for batch, again in zip(batches, data.random_batches(tokens, T, B, num_batches=5, seed=4)):
        check_windows(batch, n, B)
        np.testing.assert_array_equal(batch["x"], again["x"])


def test_random_batches_need_one_window_to_sample(tmp_path):
    tokens = data.load_tokens(token_file(tmp_path / "short.bin", T + 1), alphabet_size=50257, min_tokens=T + 1)
    with pytest.raises(data.DataError, match=r"short\.bin: 9 tokens, fewer than the 10 needed"):
        next(data.random_batches(tokens, T, B, num_batches=1, seed=0))


@pytest.mark.parametrize("n", [T + 1, 3 * T, 3 * T + 1, 10 * T + 3])
def test_eval_windows(tmp_path, n):
    tokens = data.load_tokens(token_file(tmp_path / "t.bin", n), alphabet_size=50257, min_tokens=T + 1)
    batches = list(data.eval_windows(tokens, T, batch_size=3))
    offsets = [i for i in range(0, n, T) if i + T + 1 <= n]
    assert [len(batch["x"]) for batch in batches[:-1]] == [3] * (len(batches) - 1)  # only the last is smaller
    x, y = (np.concatenate([batch[key] for batch in batches]) for key in ("x", "y"))
    np.testing.assert_array_equal(x, [np.arange(i, i + T) for i in offsets])
    np.testing.assert_array_equal(y, [np.arange(i + 1, i + T + 1) for i in offsets])


def test_load_tokens_memory_maps(tmp_path):
    tokens = data.load_tokens(token_file(tmp_path / "t.bin", 300), alphabet_size=300, min_tokens=T + 1)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
    np.testing.assert_array_equal(tokens, np.arange(300))


def test_token_id_check_reads_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_CHECK_CHUNK", 64)
    with pytest.raises(data.DataError, match=r"t\.bin: token id 250 at position 250 is not below the vocab size 250"):
        data.load_tokens(token_file(tmp_path / "t.bin", 300), alphabet_size=250, min_tokens=T + 1)


def write(path, payload: bytes) -> str:
    path.write_bytes(payload)
    return str(path)


BAD_FILES = {
    "missing": (lambda d: str(d / "absent.bin"), "absent.bin: no such file"),
    "empty": (lambda d: write(d / "empty.bin", b""), "empty.bin: empty file"),
    "odd size": (lambda d: write(d / "odd.bin", b"\x01\x00\x02"), "odd.bin: odd size (3 bytes)"),
    "id >= vocab": (lambda d: write(d / "big.bin", np.full(20, 50257, np.uint16).tobytes()),
                    "big.bin: token id 50257 at position 0 is not below the vocab size 50257"),
    "too short": (lambda d: token_file(d / "short.bin", T), f"short.bin: {T} tokens, fewer than the {T + 1} needed"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_token_file(case, tmp_path):
    make, message = BAD_FILES[case]
    with pytest.raises(data.DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        data.load_tokens(make(tmp_path), alphabet_size=50257, min_tokens=T + 1)
    assert "\n" not in str(error.value)


def test_train_iterator_refuses_a_split_too_short_to_sample(tmp_path):
    with pytest.raises(data.DataError, match=f"short.bin: {T + 1} tokens, fewer than the {T + 2} needed"):
        data.train_iterator(token_file(tmp_path / "short.bin", T + 1), T, B, seed=0)


def make_config(dataset: str, data_dir=None):
    c = config_lib.base_config("baseline")
    c.dataset, c.data_dir = dataset, data_dir
    return c


@pytest.mark.parametrize("names", [("mine_train.bin", "mine_val.bin"), ("train.bin", "val.bin")])
def test_split_paths_finds_seed_and_nanogpt_files(tmp_path, monkeypatch, names):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mine").mkdir(parents=True)
    for name in names:
        token_file(tmp_path / "data" / "mine" / name, 100)
    assert data.split_paths(make_config("mine")) == tuple(f"data/mine/{name}" for name in names)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in names:
        token_file(elsewhere / name, 100)
    assert data.split_paths(make_config("mine", str(elsewhere))) == tuple(str(elsewhere / name) for name in names)


@pytest.mark.parametrize("dataset, command", [
    ("mine", "python -m aed_jax.prepare --input YOUR_CORPUS --out data/mine --name mine (or --hf DATASET in place of "
             "--input)"),
    ("wiki_vital", "python -m aed_jax.prepare --dataset wiki_vital --out data/wiki_vital --name wiki_vital"),
])
def test_split_paths_names_a_missing_file_and_the_command_that_makes_it(tmp_path, monkeypatch, dataset, command):
    """Reading never writes token files (prepare.ensure_data prepares the built-in corpus)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataError) as error:
        data.split_paths(make_config(dataset))
    assert str(error.value) == f"data/{dataset}/{dataset}_train.bin: no such file; make it with {command}"
    (tmp_path / "data" / dataset).mkdir(parents=True)
    token_file(tmp_path / "data" / dataset / f"{dataset}_train.bin", 100)
    with pytest.raises(data.DataError, match=f"data/{dataset}/{dataset}_val.bin: no such file"):
        data.split_paths(make_config(dataset))
    assert os.listdir(tmp_path / "data" / dataset) == [f"{dataset}_train.bin"]


def files(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def test_commit_files_moves_a_set_in_and_leaves_other_files(tmp_path):
    folder = tmp_path / "mine"
    (folder / ".staging").mkdir(parents=True)
    for name, payload in (("mine_train.bin", b"old train"), ("mine_val.bin", b"old val"), ("notes.txt", b"user's")):
        (folder / name).write_bytes(payload)
    new = {"mine_train.bin": b"new train", "mine_val.bin": b"new val", "meta.json": b"{}"}
    for name, payload in new.items():
        (folder / ".staging" / name).write_bytes(payload)
    data.commit_files(str(folder / ".staging"), str(folder))
    assert files(folder) == {**new, "notes.txt": b"user's"}


def test_split_paths_finishes_an_interrupted_commit_first(tmp_path):
    """A writer killed after its commit point, with only val.bin moved: the reader moves the rest
    in before it looks, so it gets the new set, never the new val beside the old train."""
    folder = tmp_path / "mine"
    (folder / data.COMMIT).mkdir(parents=True)
    (folder / "mine_train.bin").write_bytes(b"old train")
    (folder / "mine_val.bin").write_bytes(b"new val")
    (folder / "meta.json").write_bytes(b"old meta")
    (folder / data.COMMIT / "mine_train.bin").write_bytes(b"new train")
    (folder / data.COMMIT / "meta.json").write_bytes(b"new meta")
    paths = data.split_paths(make_config("mine", str(folder)))
    assert paths == (str(folder / "mine_train.bin"), str(folder / "mine_val.bin"))
    assert files(folder) == {"mine_train.bin": b"new train", "mine_val.bin": b"new val", "meta.json": b"new meta"}
