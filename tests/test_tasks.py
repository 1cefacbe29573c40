"""The synthetic tasks: each generator against layouts worked out by hand on tiny configs and
against its structure on larger ones, determinism and batches pinned for a seed, the settings' one-line
errors, mqar's power-law gaps against Zoology's probabilities, and the registry: README's table of it,
and docs/package.md's worked example registered at runtime, checked, drawn and trained on."""
import collections
import dataclasses
import hashlib
import json
import math
import os
import re
import sys

import numpy as np
import pytest
from absl import flags

from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import tasks
from aed_jax import train
from aed_jax.config import ConfigError, base_config, validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def task_config(name: str, T: int, V: int, **task):
    c = base_config("aed")
    c.dataset = tasks.PREFIX + name
    c.model_config.context_size, c.model_config.alphabet_size = T, V
    for key, value in task.items():
        c.task[key] = value
    return c


def draw(c, B: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The batch as (s, weight), s = the T + 1 tokens of each row, after checking what every task
    promises: shapes, dtypes, y = x shifted by one, 0/1 weights, the same count of them in every row. (The
    by-hand layouts below draw some settings that config.validate refuses as degenerate: the generator
    still defines them.)"""
    batch = tasks.make_batch(c, np.random.default_rng(seed), B)
    x, y, weight = batch["x"], batch["y"], batch["weight"]
    T, V = c.model_config.context_size, c.model_config.alphabet_size
    assert x.shape == y.shape == weight.shape == (B, T)
    assert x.dtype == y.dtype == np.int32 and weight.dtype == np.float32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    assert set(np.unique(weight)) <= {0.0, 1.0} and len(set(weight.sum(axis=1))) == 1
    s = np.concatenate([x[:, :1], y], axis=1)
    assert s.min() >= 0 and s.max() < V
    return s, weight


def test_task_name_and_corpus_datasets():
    assert tasks.task_name("task:mqar") == "mqar" and tasks.task_name("task:bogus") == "bogus"
    assert tasks.task_name("wiki_vital") is None
    c = task_config("mqar", 64, 100, num_kv_pairs=1000)
    c.dataset = "wiki_vital"
    assert tasks.settings_problem(c) is None  # a corpus: the task keys are not read


def test_mqar_one_pair_by_hand():
    # T=4, V=5, N=1: the only key is 1, values are 2..4, the one gap is 0: s = [1, v, 1, v, filler].
    s, weight = draw(task_config("mqar", 4, 5, num_kv_pairs=1), 400)
    np.testing.assert_array_equal(s[:, [0, 2]], 1)
    np.testing.assert_array_equal(s[:, 1], s[:, 3])
    assert set(s[:, 1]) == {2, 3, 4} and set(s[:, 4]) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(weight, np.tile([0, 0, 1, 0], (400, 1)))  # y[2] = s[3], the value


def test_mqar_two_pairs_by_hand():
    # T=8, V=9, N=2: keys from {1, 2, 3}, values from {4..8}; the gaps are both of {0, 1}, so the
    # queries are s[4] and s[6] (both keys, in either order) and their answers s[5] and s[7].
    B = 2000
    s, weight = draw(task_config("mqar", 8, 9, num_kv_pairs=2, power_a=0.01), B)
    np.testing.assert_array_equal(weight, np.tile([0, 0, 0, 0, 1, 0, 1, 0], (B, 1)))
    keys, values = s[:, [0, 2]], s[:, [1, 3]]
    assert set(keys.ravel()) == {1, 2, 3} and set(values.ravel()) == set(range(4, 9))
    assert (keys[:, 0] != keys[:, 1]).all() and (values[:, 0] != values[:, 1]).all()
    np.testing.assert_array_equal(np.sort(s[:, [4, 6]], axis=1), np.sort(keys, axis=1))
    for row in s:
        answer = dict(zip(row[[0, 2]], row[[1, 3]]))
        assert row[5] == answer[row[4]] and row[7] == answer[row[6]]
    # The first pair's gap is Zoology's first draw: 0 with p(0) / (p(0) + p(1)) = 1 / (1 + 2 ** -0.99).
    assert abs((s[:, 4] == keys[:, 0]).mean() - 1 / (1 + 2 ** -0.99)) < 0.04


def test_mqar_structure():
    T, V, N = 64, 100, 8
    s, weight = draw(task_config("mqar", T, V, num_kv_pairs=N), 300)
    keys, values = s[:, 0:2 * N:2], s[:, 1:2 * N:2]
    assert keys.min() >= 1 and keys.max() < V // 2 and values.min() >= V // 2
    assert all(len(set(row)) == N for row in keys) and all(len(set(row)) == N for row in values)
    assert weight[:, :2 * N].sum() == 0 and weight[:, 2 * N + 1::2].sum() == 0  # queries at even positions
    for row, w in zip(s, weight):
        query = np.flatnonzero(w)
        slot = {k: i for i, k in enumerate(row[0:2 * N:2])}
        assert sorted(slot[k] for k in row[query]) == list(range(N))  # each key queried once
        np.testing.assert_array_equal(row[query + 1], [row[2 * slot[k] + 1] for k in row[query]])



def test_mqar_zero_filler_is_zoologys_figure_2_layout():
    # random_non_queries=0: the same pairs, queries and values as with random filler from the same seed,
    # and 0 everywhere else (Zoology's figure 2 data).
    T, V, N = 32, 40, 4
    s_random, w_random = draw(task_config("mqar", T, V, num_kv_pairs=N), 200, seed=5)
    s_zero, w_zero = draw(task_config("mqar", T, V, num_kv_pairs=N, random_non_queries=0), 200, seed=5)
    np.testing.assert_array_equal(w_zero, w_random)
    kept = np.zeros_like(s_zero, dtype=bool)
    kept[:, :2 * N] = True
    query_rows, query_cols = np.nonzero(w_zero)
    kept[query_rows, query_cols] = kept[query_rows, query_cols + 1] = True
    np.testing.assert_array_equal(s_zero[kept], s_random[kept])
    assert (s_zero[~kept] == 0).all() and (s_random[~kept] != 0).any()
    with pytest.raises(ConfigError, match=r"task.random_non_queries: must be 0 or 1, got 2"):
        validate(task_config("mqar", 64, 100, num_kv_pairs=4, random_non_queries=2))

@pytest.mark.parametrize("power_a", [0.01, 0.5, 1.0])
def test_mqar_gaps_follow_zoologys_power_law(power_a):
    # The first pair is queried at Zoology's first gap drawn, which has Zoology's p exactly.
    T, N, B = 40, 3, 20000
    space = (T - 2 * N) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    s, weight = draw(task_config("mqar", T, T + 1, num_kv_pairs=N, power_a=power_a), B)
    first_query = ((weight == 1) & (s[:, :T] == s[:, :1])).argmax(axis=1)
    gaps = (first_query - 2 * N) // 2
    assert np.abs(np.bincount(gaps, minlength=space) / B - p).max() < 5 * np.sqrt(p.max() / B)


def test_mqar_small_gaps_are_more_frequent_with_several_pairs():
    T, N = 64, 4
    _, weight = draw(task_config("mqar", T, 100, num_kv_pairs=N, power_a=0.01), 2000)
    counts = np.bincount((np.nonzero(weight)[1] - 2 * N) // 2, minlength=(T - 2 * N) // 2)
    assert counts[0] > counts[5] > counts[-1] and counts[0] > 3 * counts[-1]


def test_distinct_draws_are_uniform_ordered_tuples():
    for pool, n, rows in [(4, 2, 24000), (5, 3, 30000)]:  # 12 and 60 equally likely tuples
        drawn = tasks._distinct(np.random.default_rng(0), rows, pool, n)
        counts = collections.Counter(map(tuple, drawn))
        assert all(len(set(t)) == n for t in counts) and len(counts) == math.perm(pool, n)
        expected = rows / len(counts)
        assert all(abs(k - expected) < 0.2 * expected for k in counts.values())


def test_copy_by_hand():
    # T=4, L=2, V=2: the segment is [a, 1 - a] and every other token 1 - a; one filler token goes
    # before, between or after the copies. y is scored where it is the repeat's second token.
    s, weight = draw(task_config("copy", 4, 2, copy_length=2), 1200)
    expected = {
        ((0, 1, 0, 1, 1), 2), ((0, 1, 1, 0, 1), 3), ((1, 0, 1, 0, 1), 3),
        ((1, 0, 1, 0, 0), 2), ((1, 0, 0, 1, 0), 3), ((0, 1, 0, 1, 0), 3),
    }
    rows = collections.Counter((tuple(row), int(np.flatnonzero(w)[0])) for row, w in zip(s, weight))
    assert set(rows) == expected
    assert all(abs(k / 1200 - 1 / 6) < 0.05 for k in rows.values())


def test_copy_structure():
    T, V, L = 64, 50, 8
    s, weight = draw(task_config("copy", T, V, copy_length=L), 300)
    assert (weight.sum(axis=1) == L - 1).all()
    for row, w in zip(s, weight):
        repeat = np.flatnonzero(w)[0]
        np.testing.assert_array_equal(np.flatnonzero(w), repeat + np.arange(L - 1))
        occurrences = np.flatnonzero(row == row[repeat])
        assert len(occurrences) == 2 and occurrences[1] == repeat  # the repeat's first token: twice in all
        first = occurrences[0]
        assert repeat - first >= L
        np.testing.assert_array_equal(row[repeat:repeat + L], row[first:first + L])


def test_sort_by_hand():
    # T=6, S=2, V=3: the only number is 2: [2, 2, SEP, 2, 2] then PAD up to T + 1 = 7 tokens.
    s, weight = draw(task_config("sort", 6, 3, sort_length=2), 5)
    np.testing.assert_array_equal(s, np.tile([2, 2, 0, 2, 2, 1, 1], (5, 1)))
    np.testing.assert_array_equal(weight, np.tile([0, 0, 1, 1, 0, 0], (5, 1)))
    # T=10, S=2: two problems of 5 tokens, then one PAD: [a, b, 0, sorted, c, d, 0, sorted, 1].
    s, weight = draw(task_config("sort", 10, 10, sort_length=2), 200)
    np.testing.assert_array_equal(weight, np.tile([0, 0, 1, 1, 0, 0, 0, 1, 1, 0], (200, 1)))
    np.testing.assert_array_equal(s[:, [2, 7, 10]], np.tile([0, 0, 1], (200, 1)))
    np.testing.assert_array_equal(s[:, [3, 4]], np.sort(s[:, [0, 1]], axis=1))
    np.testing.assert_array_equal(s[:, [8, 9]], np.sort(s[:, [5, 6]], axis=1))
    assert set(s[:, [0, 1, 5, 6]].ravel()) == set(range(2, 10))


def test_sort_structure():
    T, V, S = 64, 50, 8  # 65 // 17 = 3 problems and 14 PAD tokens
    s, weight = draw(task_config("sort", T, V, sort_length=S), 100)
    assert (weight.sum(axis=1) == 3 * S).all()
    for row, w in zip(s, weight):
        starts = np.arange(3) * (2 * S + 1)
        for start in starts:
            numbers, answer = row[start:start + S], row[start + S + 1:start + 2 * S + 1]
            assert numbers.min() >= 2 and row[start + S] == tasks.SORT_SEP
            np.testing.assert_array_equal(answer, np.sort(numbers))
        np.testing.assert_array_equal(row[3 * (2 * S + 1):], tasks.SORT_PAD)
        scored = np.flatnonzero(w)
        np.testing.assert_array_equal(scored, (starts[:, None] + S + np.arange(S)).ravel())


@pytest.mark.parametrize("T,S,problems", [(64, 8, 3), (64, 16, 1), (10, 2, 2)])
def test_sorts_answers_split_into_problems_in_equal_consecutive_shares(T, S, problems):
    """losses.exact_match_sums takes a row's answers, in order, in problems_per_sequence equal shares as its
    problems: each share of a sort row is one problem's sorted numbers (one block of 2S + 1 tokens)."""
    c = task_config("sort", T, 50, sort_length=S)
    assert tasks.problems_per_sequence(c) == problems
    for w in draw(c, 20)[1]:
        shares = np.array_split(np.flatnonzero(w), problems)
        assert [set(share // (2 * S + 1)) for share in shares] == [{p} for p in range(problems)]
        assert all(len(share) == S for share in shares)


def test_mqar_and_copy_are_one_problem_a_sequence():
    assert tasks.problems_per_sequence(task_config("mqar", 64, 100)) == 1
    assert tasks.problems_per_sequence(task_config("copy", 64, 100)) == 1


@pytest.mark.parametrize("c", [
    task_config("mqar", 64, 100, num_kv_pairs=16), task_config("copy", 64, 100, copy_length=32),
    task_config("sort", 64, 100, sort_length=32),
], ids=["mqar", "copy", "sort"])
def test_batches_are_fixed_by_the_rng(c):
    first, again, other = (draw(c, 8, seed) for seed in (3, 3, 4))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    rng = np.random.default_rng(3)
    assert not np.array_equal(tasks.make_batch(c, rng, 8)["x"], tasks.make_batch(c, rng, 8)["x"])


def test_defaults_pass_check():
    for name in tasks.TASKS:
        c = base_config("aed")
        c.dataset = tasks.PREFIX + name
        validate(c)


REGISTERED = ", ".join(tasks.PREFIX + name for name in tasks.TASKS)  # in the registry's order, as errors list them


@pytest.mark.parametrize("name, T, V, task, match", [
    ("bogus", 64, 100, {}, rf"^dataset: 'task:bogus' is not one of {REGISTERED}$"),
    ("mqar", 64, 100, {"num_kv_pairs": 40},
     r"^task\.num_kv_pairs: 40 pairs need 4 \* 40 = 160 tokens, more than context_size=64$"),
    ("mqar", 64, 100, {"num_kv_pairs": 0}, r"^task\.num_kv_pairs: must be a positive integer, got 0$"),
    ("mqar", 64, 100, {"num_kv_pairs": -3}, r"^task\.num_kv_pairs: must be a positive integer, got -3$"),
    ("mqar", 63, 100, {}, r"^model_config\.context_size: mqar needs it even"),
    ("mqar", 64, 64, {}, r"^model_config\.alphabet_size: mqar needs more ids than context_size=64 .*got 64$"),
    ("mqar", 64, 100, {"power_a": 0.0}, r"^task\.power_a: must be a finite number in \(0, 1\], got 0\.0$"),
    ("mqar", 64, 100, {"power_a": 1.5}, r"^task\.power_a: .*got 1\.5$"),
    ("mqar", 64, 100, {"power_a": float("nan")}, r"^task\.power_a: .*got nan$"),
    ("copy", 64, 100, {"copy_length": 1}, r"^task\.copy_length: must be at least 2"),
    ("copy", 64, 100, {"copy_length": 33}, r"^task\.copy_length: two copies of 33 tokens need 66, "
                                            r"more than context_size=64$"),
    ("copy", 64, 1, {}, r"^model_config\.alphabet_size: copy needs at least 3 ids .*got 1$"),
    ("copy", 64, 2, {}, r"^model_config\.alphabet_size: copy needs at least 3 ids \(with 2, every token but the "
                        r"repeat's first is the one other id, so the answers are known without copying\), got 2$"),
    ("sort", 64, 100, {"sort_length": 33}, r"^task\.sort_length: .* need 2 \* 33 = 66 tokens, "
                                            r"more than context_size=64$"),
    ("sort", 64, 100, {"sort_length": True}, r"^task\.sort_length: must be a positive integer, got True$"),
    ("sort", 64, 2, {}, r"^model_config\.alphabet_size: sort needs at least 4 ids"),
    ("sort", 64, 3, {}, r"^model_config\.alphabet_size: sort needs at least 4 ids \(separator, pad and two numbers: "
                        r"with one number every list is already sorted\), got 3$"),
    ("sort", 64, 100, {"sort_length": 1}, r"^task\.sort_length: must be at least 2 \(one number is its own sorted "
                                           r"list\), got 1$"),
])
def test_check_errors_are_one_line_naming_the_key(name, T, V, task, match):
    """Each key's own range and how they fit together (tasks.settings_problem): both config.validate's."""
    c = task_config(name, T, V, **task)
    with pytest.raises(ConfigError, match=match) as e:
        validate(c)
    assert "\n" not in str(e.value)


def test_check_reads_only_the_chosen_tasks_keys():
    assert tasks.settings_problem(task_config("copy", 64, 100, num_kv_pairs=1000, power_a=5.0, sort_length=1000)) is None


@pytest.mark.parametrize("c", [task_config("mqar", 8, 9, num_kv_pairs=2), task_config("copy", 4, 3, copy_length=2),
                               task_config("sort", 4, 4, sort_length=2)], ids=["mqar", "copy", "sort"])
def test_the_smallest_accepted_settings_still_need_the_skill(c):
    """At each task's smallest accepted sizes the answers are not known without the skill: the scored
    targets vary from row to row, and they are not one function of the token before them (copy with 2 ids
    and sort with one number were: solved in two steps, or all equal)."""
    validate(c)
    s, weight = draw(c, 2000)
    before, answer = s[:, :-1][weight > 0], s[:, 1:][weight > 0]
    assert len(set(answer)) > 1
    assert any(len(set(answer[before == t])) > 1 for t in set(before))
    if tasks.task_name(c.dataset) == "sort":
        lists = s[:, :2]
        assert (lists[:, 0] > lists[:, 1]).any()  # some lists need sorting


@pytest.mark.parametrize("name, T, V, settings, digest", [
    ("mqar", 64, 100, {"num_kv_pairs": 8}, "9cddf01ed6b43147"),
    ("mqar", 40, 41, {"num_kv_pairs": 3, "power_a": 0.5}, "532eabb835b82bf9"),
    ("copy", 64, 50, {"copy_length": 8}, "1ebe4e32b269740b"),
    ("copy", 32, 3, {"copy_length": 2}, "7626561a1ade7f32"),
    ("sort", 64, 50, {"sort_length": 8}, "94d819a769c48168"),
    ("sort", 10, 10, {"sort_length": 2}, "fc3e8ffd14c7015d"),
])
def test_batches_are_pinned_for_a_seed(name, T, V, settings, digest):
    """The generators' output for a seed never changes (a run resumes, and a finished run reproduces, only if
    its stream does): sha256 of x, y and weight (dtype, shape, bytes) of 16 rows, as drawn when pinned."""
    batch = tasks.make_batch(task_config(name, T, V, **settings), np.random.default_rng((1337, 5)), 16)
    h = hashlib.sha256()
    for key in ("x", "y", "weight"):
        a = np.ascontiguousarray(batch[key])
        h.update(f"{key}{a.dtype}{a.shape}".encode() + a.tobytes())
    assert h.hexdigest()[:16] == digest


def test_every_registered_task_has_its_row_in_the_readme():
    """README's table of tasks says what each task is with its registered doc line, and lists no other task."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        rows = re.findall(r"^\| `task:(\w+)` \| (.*?) \|", f.read(), re.M)
    assert rows == [(task.name, task.doc) for task in tasks.TASKS.values()]


@pytest.fixture
def reverse_task(monkeypatch):
    """docs/package.md's worked example, "Add a task", registered as written (the block is run in the
    namespace tasks.py's own tasks are defined in), on a copy of the registry that is put back after."""
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))
    with open(os.path.join(ROOT, "docs", "package.md"), encoding="utf-8") as f:
        section = f.read().split("\n## Add a task\n")[1].split("\n## ")[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    exec(block, {"np": np, "Task": tasks.Task, "Setting": tasks.Setting, "register": tasks.register})
    return tasks.TASKS["reverse"]


def test_a_task_added_to_the_registry_is_configured_and_checked(reverse_task, monkeypatch, capsys):
    assert list(tasks.TASKS)[-1] == "reverse" and "reverse" not in REGISTERED  # the fixture's, not the package's
    c = task_config("reverse", 16, 32)
    assert c.task.reverse_length == 8  # the key and its default come from the registry: config.py names neither
    validate(c)
    meanings = config_lib.meanings()
    assert meanings["task.reverse_length"] == "reverse: tokens to reverse"
    assert meanings["dataset"].endswith("| task:reverse")
    # From the command line, as any key.
    monkeypatch.chdir(ROOT)
    args = ["prog", "--config=configs/tiny.py", "--config.dataset=task:reverse", "--config.task.reverse_length=3",
            "--config.model_config.alphabet_size=16"]
    monkeypatch.setattr(sys, "argv", args)
    flag_values = flags.FlagValues()
    cli.define_config_flag(flag_values)
    cli.parse_flags(args, flag_values)
    assert cli.get_config(flag_values).task.reverse_length == 3
    for length, match in [(0, r"^task\.reverse_length: must be a positive integer, got 0$"),
                          (1, r"^task\.reverse_length: must be at least 2 \(one token is its own reverse\), got 1$"),
                          (9, r"^task\.reverse_length: the segment and its reverse need 18 tokens, more than "
                              r"context_size=16$")]:
        c.task.reverse_length = length
        with pytest.raises(ConfigError, match=match):
            validate(c)
    c = task_config("mqar", 16, 32, num_kv_pairs=2, reverse_length=9)  # not reverse: not its rules
    validate(c)
    c.dataset = "task:reversed"
    with pytest.raises(ConfigError, match=rf"^dataset: 'task:reversed' is not one of {REGISTERED}, task:reverse$"):
        validate(c)


def test_a_registered_setting_or_name_cannot_be_declared_twice(reverse_task):
    """The config's task section is flat: a second task declaring reverse_length would share its value."""
    with pytest.raises(ValueError, match="setting task.reverse_length is task reverse's already"):
        tasks.register(dataclasses.replace(reverse_task, name="mirror"))
    with pytest.raises(ValueError, match="task name 'reverse': must be an identifier no task has"):
        tasks.register(dataclasses.replace(reverse_task, settings={}))
    assert list(tasks.TASKS)[-1] == "reverse"


def test_a_task_added_to_the_registry_draws_its_batches(reverse_task):
    T, L = 16, 5
    c = task_config("reverse", T, 32, reverse_length=L)
    validate(c)
    s, weight = draw(c, 50)
    np.testing.assert_array_equal(weight, np.tile(np.arange(T) // L == 1, (50, 1)))  # y at t = L .. 2L - 1
    np.testing.assert_array_equal(s[:, L + 1:2 * L + 1], s[:, L - 1::-1])
    assert (s[:, :L] > 0).all() and not s[:, L].any() and not s[:, 2 * L + 1:].any()
    assert tasks.problems_per_sequence(c) == 1 and tasks.chance_token_accuracy(c) == 1 / 31


def test_a_task_added_to_the_registry_trains(reverse_task, tmp_path):
    """The trainer streams it, estimates its accuracies and records its settings: nothing else to edit."""
    c = base_config("baseline")  # the smaller program to compile
    c.dataset, c.task.reverse_length = "task:reverse", 4
    c.model_config.update(dict(context_size=16, alphabet_size=32, n_embed=16, n_head=2, n_layer=1))
    c.update(dict(batch_size=4, gradient_accumulation_steps=1, train_steps=2, warmup_iters=1, lr_decay_iters=4,
                  est_interval=2, est_steps=1, log_interval=1))
    validate(c)
    workdir = str(tmp_path / "run")
    outcome = train.train_and_evaluate(c, workdir)
    assert 0.0 <= outcome.estimate["val_token_accuracy"] <= 1.0 and outcome.estimate["step"] == 2
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["task"]["reverse_length"] == 4
