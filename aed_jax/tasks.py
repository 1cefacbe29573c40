"""Synthetic tasks as a data source: sequences drawn on the fly, scored only on their answers.

`dataset = "task:<name>"` replaces the token files with `make_batch`: each row is a sequence s of
T + 1 tokens (T = context_size) over V = alphabet_size ids, x = s[:-1] and y = s[1:] as for a
corpus window, and weight 1.0 exactly where y is an answer the task asks for. Every row has the same
number of answers, so a mean over micro-batches is the global mean. Pure numpy, vectorised over the
batch (no jax: data.py's grain threads call it, and config.py validates with it before jax loads).

A task is one `Task` in `TASKS`, registered by `register`: its settings (the `task.<key>` config
keys, their defaults and meanings: config.py builds its `task` section from them), its checks, its
generator, how it is scored (problems a sequence, chance accuracy) and its doc line. Nothing else in
the package branches on a task's name; docs/package.md, "Add a task", is the recipe. The built-in
tasks (each generator's docstring says exactly how it draws):

mqar -- multi-query associative recall, Zoology's `multiquery_ar`.
copy -- induction: a segment of `copy_length` tokens reappears later; its repeat is scored.
sort -- `sort_length` numbers, a separator, the same numbers sorted; packs several problems a sequence.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

PREFIX = "task:"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One `task.<key>` config key: its default (whose type is the key's), its meaning (`--show_config`)
    and its own range. How it fits the sequence and the other keys is its task's `problem`."""
    default: int | float  # an int default makes an integer key (a bool is refused); a float, any finite number
    meaning: str
    ok: Callable[[int | float], bool] = lambda value: value > 0
    rule: str = "a positive integer"  # what `ok` accepts, as the error says it: "must be <rule>"

    def problem(self, key: str, value) -> str | None:
        """One line naming `task.<key>` when `value` is out of this setting's own range, else None."""
        kinds = int if isinstance(self.default, int) else (int, float)
        number = isinstance(value, kinds) and not isinstance(value, bool) and math.isfinite(value)
        return None if number and self.ok(value) else f"task.{key}: must be {self.rule}, got {value!r}"


def _one_problem(c) -> int:
    return 1


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything about one synthetic task, in one place. Each callable takes the run's config `c` (its
    `model_config.context_size` T and `alphabet_size` V, and `c.task.<key>` for the task's settings)."""
    name: str  # dataset "task:<name>"; run folders are named "<config>-task_<name>"
    doc: str  # one line: what the model must do (README's table of tasks says the same)
    settings: dict[str, Setting]  # its task.<key> config keys, declared by no other task
    # Why the settings, each in its own range, are unusable together (one line naming the key, e.g.
    # "task.copy_length: two copies ... need 66, more than context_size=64"), None when usable. Unusable
    # includes degenerate: settings under which the answers need no skill the task is about.
    problem: Callable[..., str | None]
    # (c, rng, rows) -> (sequences int32 [rows, T + 1] in [0, V), weights float32 [rows, T]): weight[:, t]
    # is 1.0 where sequences[:, t + 1] is an answer, the same count in every row; fully determined by rng.
    make: Callable[..., tuple[np.ndarray, np.ndarray]]
    # The token accuracy of a guess that knows the task's format but not its content: the chance line
    # of the task's accuracy figures (experiments/compare.py).
    chance: Callable[..., float]
    # How many problems a sequence packs, one after another, each with the same number of answers: the
    # row's answers in that many equal consecutive shares (`losses.exact_match_sums`).
    problems_per_sequence: Callable[..., int] = _one_problem


TASKS: dict[str, Task] = {}  # name -> Task, in the order they were registered (the order errors list them)


def register(task: Task) -> Task:
    """Adds `task` to TASKS. Its name and its settings' keys must be new: the config's `task` section
    is flat (`task.<key>`, the seed's names), so two tasks declaring one key would share it."""
    if not task.name.isidentifier() or task.name in TASKS:
        raise ValueError(f"task name {task.name!r}: must be an identifier no task has (taken: {', '.join(TASKS)})")
    taken = {key: other.name for other in TASKS.values() for key in other.settings}
    for key in task.settings:
        if key in taken:
            raise ValueError(f"task {task.name}: setting task.{key} is task {taken[key]}'s already")
    TASKS[task.name] = task
    return task


def settings() -> dict[str, tuple[str, Setting]]:
    """Every registered task's settings, key -> (task name, Setting), in registration order: the config's
    `task` section (config.base_config) and their meanings (config.meanings)."""
    return {key: (task.name, setting) for task in TASKS.values() for key, setting in task.settings.items()}


def task_name(dataset: str) -> str | None:
    """"mqar" for "task:mqar"; None for a corpus name (no "task:" prefix)."""
    return dataset[len(PREFIX):] if dataset.startswith(PREFIX) else None


def settings_problem(c) -> str | None:
    """What makes `c.dataset`'s task settings unusable together, as one line naming the key: an unknown
    task, or its task's `problem`; None for good settings or a corpus. config.validate raises it before
    jax loads, having checked each key's own range (`Setting.problem`, every task's: the config holds
    them all). Only the chosen task's rules apply, never another's."""
    name = task_name(c.dataset)
    if name is None:
        return None
    if name not in TASKS:
        return f"dataset: {c.dataset!r} is not one of {', '.join(PREFIX + task for task in TASKS)}"
    return TASKS[name].problem(c)


def problems_per_sequence(c) -> int:
    """How many independent problems a sequence of `c.dataset`'s task packs (its `Task.problems_per_sequence`;
    1 for a corpus). Sequence accuracy counts problems, not sequences (`losses.exact_match_sums`), so
    sort-8's (3 problems a sequence at T = 64) compares with sort-16's (1)."""
    name = task_name(c.dataset)
    return 1 if name is None else TASKS[name].problems_per_sequence(c)


def chance_token_accuracy(c) -> float | None:
    """The chance line of `c.dataset`'s task accuracy figure (its `Task.chance`); None for a corpus."""
    name = task_name(c.dataset)
    return None if name is None else TASKS[name].chance(c)


def make_batch(c, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """{"x": int32 [B, T], "y": int32 [B, T], "weight": float32 [B, T]} of task `c.dataset` (whose
    settings have no `settings_problem`): y[:, t] is the token after x[:, t] (the task draws whole
    sequences, so this holds for every task), weight is 1.0 on the answers and 0.0 elsewhere. Fully
    determined by rng's state."""
    seq_BxT1, weight_BxT = TASKS[task_name(c.dataset)].make(c, rng, batch_size)
    return {"x": seq_BxT1[:, :-1], "y": seq_BxT1[:, 1:], "weight": weight_BxT}


# mqar ------------------------------------------------------------------------------------------------

def _mqar(c, rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Multi-query associative recall, Zoology's `multiquery_ar` (Arora et al. 2023, HazyResearch/zoology,
    zoology/data/multiquery_ar.py, formerly associative_recall.py) with T its input_seq_len and V its
    vocab_size. As there: N = num_kv_pairs distinct keys from [1, V // 2) and N distinct values from
    [V // 2, V), each in uniformly random order, written key, value, key, value, ... in s[0:2N]; then each
    key is queried once, at s[2N + 2g] for N distinct gaps g in [0, (T - 2N) // 2) drawn one after another
    without replacement with p(g) proportional to (g + 1) ** (power_a - 1) (np.random.choice(replace=False,
    p=p)), the i-th pair at the i-th gap drawn (so earlier pairs tend to be queried sooner); every other
    token is uniform in [0, V) with task.random_non_queries = 1 (Zoology's default), 0 with
    task.random_non_queries = 0 (Zoology's figure 2); the answer scored is the query's value. Zoology's
    asserts are `_mqar_problem`'s: T even, V > T, 4N <= T.

    Deviations: (1) Zoology's inputs and labels are separate arrays, so the input after a query is random
    filler while its label is the value; here y is x shifted, so the value follows its query in s (the
    model sees it only after it is scored, and it is a value the model has already seen in the pairs).
    (2) The draws are vectorised and not numpy's calls (distinct values of i.i.d. draws in random order for
    the keys and values, an exponential race for the gaps), with the same distribution."""
    T, V, N = c.model_config.context_size, c.model_config.alphabet_size, c.task.num_kv_pairs
    seq_BxT1 = rng.integers(0, V, size=(B, T + 1), dtype=np.int32)  # the non-query tokens
    if not c.task.random_non_queries:  # drawn all the same, so one seed's keys and gaps do not depend on it
        seq_BxT1[:] = 0
    keys_BxN, values_BxN = 1 + _distinct(rng, B, V // 2 - 1, N), V // 2 + _distinct(rng, B, V - V // 2, N)
    seq_BxT1[:, 0:2 * N:2], seq_BxT1[:, 1:2 * N:2] = keys_BxN, values_BxN
    # Successive draws without replacement with probabilities p come in the order in which exponential
    # clocks of rates p ring: the N first to ring, in that order, are Zoology's gaps. As there, the i-th
    # pair is queried at the i-th gap drawn, so earlier pairs tend to be queried sooner.
    p_G = np.arange(1, (T - 2 * N) // 2 + 1) ** (c.task.power_a - 1.0)
    gaps_BxN = np.argsort(rng.standard_exponential((B, len(p_G))) / p_G, axis=1)[:, :N]
    query_BxN, rows_Bx1 = 2 * N + 2 * gaps_BxN, np.arange(B)[:, None]
    seq_BxT1[rows_Bx1, query_BxN], seq_BxT1[rows_Bx1, query_BxN + 1] = keys_BxN, values_BxN
    weight_BxT = np.zeros((B, T), np.float32)
    weight_BxT[rows_Bx1, query_BxN] = 1.0  # y there is the token after the query: its value
    return seq_BxT1, weight_BxT


def _distinct(rng: np.random.Generator, rows: int, pool: int, n: int) -> np.ndarray:
    """[rows, n]: in each row n distinct integers of [0, pool), a uniformly random ordered draw.

    The distinct values among m i.i.d. draws, given how many there are, are a uniformly random set;
    n of them taken in the order of random priorities are then a uniformly random ordered draw. A row
    with fewer than n distinct values is drawn again (that count says nothing about which values they
    are, so this keeps the draw exact). m covers the expected repeats with room to spare (mqar's pools
    hold at least 2n - 1 ids), so redraws are rare: it all costs a sort of [rows, m], where a permutation
    of the pool per row (half a 50k vocabulary) would cost hundreds of times more.
    """
    out_Rxn, todo_R, m = np.empty((rows, n), np.int64), np.arange(rows), n + -(-n * n // pool) + 8
    while len(todo_R):
        sorted_Rxm = np.sort(rng.integers(0, pool, size=(len(todo_R), m)), axis=1)
        priority_Rxm = rng.random(sorted_Rxm.shape)
        priority_Rxm[:, 1:][sorted_Rxm[:, 1:] == sorted_Rxm[:, :-1]] = 2.0  # a repeat: never picked
        done_R = (priority_Rxm < 2.0).sum(axis=1) >= n
        pick_Rxn = np.argsort(priority_Rxm[done_R], axis=1)[:, :n]
        out_Rxn[todo_R[done_R]] = np.take_along_axis(sorted_Rxm[done_R], pick_Rxn, axis=1)
        todo_R = todo_R[~done_R]
    return out_Rxn


def _mqar_problem(c) -> str | None:
    """Zoology's asserts; V > T >= 4N also leaves N distinct keys in [1, V // 2) and N values in [V // 2, V)."""
    T, V, N = c.model_config.context_size, c.model_config.alphabet_size, c.task.num_kv_pairs
    if T % 2:
        return f"model_config.context_size: mqar needs it even (Zoology's input_seq_len), got {T}"
    if 4 * N > T:
        return f"task.num_kv_pairs: {N} pairs need 4 * {N} = {4 * N} tokens, more than context_size={T}"
    if V <= T:
        return (f"model_config.alphabet_size: mqar needs more ids than context_size={T} "
                f"(Zoology's vocab_size > input_seq_len), got {V}")
    return None


register(Task(
    name="mqar",
    doc="multi-query associative recall as Zoology defines it (Arora et al. 2023): key-value pairs, then each key "
        "queried once at power-law gaps; emit its value",
    settings={"num_kv_pairs": Setting(8, "key-value pairs per sequence, each queried once"),
              "power_a": Setting(0.01, "power-law parameter of the query gaps (Zoology's power_a), in (0, 1]",
                                 ok=lambda a: 0 < a <= 1, rule="a finite number in (0, 1]"),
              "random_non_queries": Setting(1, "1: the tokens that are neither pairs nor queries are uniform in [0, "
                                               "alphabet_size) (Zoology's default); 0: they are 0 (Zoology's figure 2)",
                                            ok=lambda v: v in (0, 1), rule="0 or 1")},
    problem=_mqar_problem,
    make=_mqar,
    # One of the N values seen in the context (1/N, not 1/V: the values are few and there to be copied).
    chance=lambda c: 1 / c.task.num_kv_pairs,
))


# copy ------------------------------------------------------------------------------------------------

def _copy(c, rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
    """Induction: a segment of L = copy_length tokens appears and later reappears; the first token of the
    repeat occurs nowhere else in the sequence, so once the model has seen it, the other L - 1 tokens of
    the repeat are determined by the prefix: those L - 1 targets are scored (no marker token, so every id
    stays ordinary text). Every other token, the segment's included, is uniform over the V - 1 ids other
    than that first token; the T + 1 - 2L filler tokens are split before, between and after the two copies
    uniformly over all such splits."""
    T, V, L = c.model_config.context_size, c.model_config.alphabet_size, c.task.copy_length
    first_B = rng.integers(0, V, size=B)

    def other_than_first(shape):  # uniform over the V - 1 ids other than the row's first_B
        drawn = rng.integers(0, V - 1, size=shape, dtype=np.int32)
        return drawn + (drawn >= first_B[:, None])

    seq_BxT1, segment_BxL = other_than_first((B, T + 1)), other_than_first((B, L))
    segment_BxL[:, 0] = first_B
    # The F = T + 1 - 2L filler tokens split as (u, v - u, F - v) before, between and after the copies,
    # 0 <= u <= v <= F: a 2-subset {u, v + 1} of [0, F + 2), drawn uniformly.
    free = T + 1 - 2 * L
    lo_B = rng.integers(0, free + 2, size=B)
    hi_B = rng.integers(0, free + 1, size=B)
    hi_B += hi_B >= lo_B
    lo_B, hi_B = np.minimum(lo_B, hi_B), np.maximum(lo_B, hi_B)
    first_copy_BxL = lo_B[:, None] + np.arange(L)
    repeat_BxL = (L - 1 + hi_B)[:, None] + np.arange(L)
    rows_Bx1 = np.arange(B)[:, None]
    seq_BxT1[rows_Bx1, first_copy_BxL] = segment_BxL
    seq_BxT1[rows_Bx1, repeat_BxL] = segment_BxL
    weight_BxT = np.zeros((B, T), np.float32)
    weight_BxT[rows_Bx1, repeat_BxL[:, :-1]] = 1.0  # targets: the repeat's 2nd..last tokens
    return seq_BxT1, weight_BxT


def _copy_problem(c) -> str | None:
    T, V, L = c.model_config.context_size, c.model_config.alphabet_size, c.task.copy_length
    if L < 2:
        return (f"task.copy_length: must be at least 2 (the repeat's first token is unpredictable, "
                f"the rest is scored), got {L}")
    if 2 * L > T:
        return f"task.copy_length: two copies of {L} tokens need {2 * L}, more than context_size={T}"
    if V < 3:
        return (f"model_config.alphabet_size: copy needs at least 3 ids (with {V}, every token but the repeat's "
                f"first is the one other id, so the answers are known without copying), got {V}")
    return None


register(Task(
    name="copy",
    doc="induction: a random segment reappears later; continue it",
    settings={"copy_length": Setting(16, "tokens in the segment that reappears later")},
    problem=_copy_problem,
    make=_copy,
    chance=lambda c: 1 / (c.model_config.alphabet_size - 1),  # one of the V - 1 ids a copied token may be
))


# sort ------------------------------------------------------------------------------------------------

SORT_SEP, SORT_PAD = 0, 1  # sort's separator and pad tokens; its numbers are the ids above


def _sort_problems(c) -> int:
    """(T + 1) // (2S + 1): the problems of 2S + 1 tokens that fit in a sequence."""
    return (c.model_config.context_size + 1) // (2 * c.task.sort_length + 1)


def _sort(c, rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
    """S = sort_length numbers, uniform in [2, V) with repeats, then SEP = 0, then the same numbers in
    ascending order; scored on the S sorted tokens (the first is the target at SEP). A sequence packs
    (T + 1) // (2S + 1) independent problems one after another (`_sort_problems`), and the tokens left over
    at its end are PAD = 1, never scored."""
    T, V, S = c.model_config.context_size, c.model_config.alphabet_size, c.task.sort_length
    P = _sort_problems(c)
    numbers_BxPxS = rng.integers(SORT_PAD + 1, V, size=(B, P, S), dtype=np.int32)
    problems_BxPx2S1 = np.concatenate(
        [numbers_BxPxS, np.full((B, P, 1), SORT_SEP, np.int32), np.sort(numbers_BxPxS, axis=2)], axis=2)
    seq_BxT1 = np.full((B, T + 1), SORT_PAD, np.int32)
    seq_BxT1[:, :P * (2 * S + 1)] = problems_BxPx2S1.reshape(B, -1)
    # In a problem's 2S + 1 tokens, y at SEP and at the sorted tokens but the last is a sorted token.
    scored_2S1 = np.repeat([0.0, 1.0, 0.0], [S, S, 1]).astype(np.float32)
    weight_T = np.zeros(T, np.float32)
    weight_T[:P * (2 * S + 1)] = np.tile(scored_2S1, P)[:T]
    return seq_BxT1, np.broadcast_to(weight_T, (B, T)).copy()


def _sort_problem(c) -> str | None:
    T, V, S = c.model_config.context_size, c.model_config.alphabet_size, c.task.sort_length
    if S < 2:
        return f"task.sort_length: must be at least 2 (one number is its own sorted list), got {S}"
    if 2 * S > T:
        return (f"task.sort_length: the list and its sorted copy need 2 * {S} = {2 * S} tokens, "
                f"more than context_size={T}")
    if V < 4:
        return (f"model_config.alphabet_size: sort needs at least 4 ids (separator, pad and two numbers: with "
                f"one number every list is already sorted), got {V}")
    return None


register(Task(
    name="sort",
    doc="numbers, a separator, the same numbers sorted",
    settings={"sort_length": Setting(8, "numbers to sort")},
    problem=_sort_problem,
    make=_sort,
    chance=lambda c: 1 / (c.model_config.alphabet_size - 2),  # one of the V - 2 numbers
    problems_per_sequence=_sort_problems,
))
