"""Synthetic tasks as a data source: sequences drawn on the fly, scored only on their answers.

`dataset = "task:<name>"` replaces the token files with `make_batch`: each row is a sequence s of
T + 1 tokens (T = context_size) over V = alphabet_size ids, x = s[:-1] and y = s[1:] as for a
corpus window, and weight 1.0 exactly where y is an answer the task asks for. Every row has the same
number of answers, so a mean over micro-batches is the global mean. Pure numpy, vectorised over the
batch (no jax: data.py's grain threads call it).

mqar -- multi-query associative recall, Zoology's `multiquery_ar` (Arora et al. 2023,
HazyResearch/zoology, zoology/data/multiquery_ar.py, formerly associative_recall.py) with T its
input_seq_len and V its vocab_size. As there: N = num_kv_pairs distinct keys from [1, V // 2) and N
distinct values from [V // 2, V), each in uniformly random order, written key, value, key, value, ...
in s[0:2N]; then each key is queried once, at s[2N + 2g] for N distinct gaps g in [0, (T - 2N) // 2)
drawn one after another without replacement with p(g) proportional to (g + 1) ** (power_a - 1)
(np.random.choice(replace=False, p=p)), the i-th pair at the i-th gap drawn (so earlier pairs tend to
be queried sooner); every other token is uniform in [0, V) (random_non_queries=True); the answer
scored is the query's value. Zoology's asserts are `settings_problem`'s: T even, V > T, 4N <= T.
Deviations: (1) Zoology's inputs and labels are separate arrays, so the input after a query is random
filler while its label is the value; here y is x shifted, so the value follows its query in s (the
model sees it only after it is scored, and it is a value the model has already seen in the pairs).
(2) The draws are vectorised and not numpy's calls (distinct values of i.i.d. draws in random order
for the keys and values, an exponential race for the gaps), with the same distribution.

copy -- induction: a segment of L = copy_length tokens appears and later reappears; the first token
of the repeat occurs nowhere else in the sequence, so once the model has seen it, the other L - 1
tokens of the repeat are determined by the prefix: those L - 1 targets are scored (no marker token,
so every id stays ordinary text). Every other token, the segment's included, is uniform over the
V - 1 ids other than that first token; the T + 1 - 2L filler tokens are split before, between and
after the two copies uniformly over all such splits.

sort -- S = sort_length numbers, uniform in [2, V) with repeats, then SEP = 0, then the same numbers
in ascending order; scored on the S sorted tokens (the first is the target at SEP). A sequence packs
(T + 1) // (2S + 1) independent problems one after another (`problems_per_sequence`), and the tokens
left over at its end are PAD = 1, never scored.
"""
from __future__ import annotations

import numpy as np

TASKS = ("mqar", "copy", "sort")
PREFIX = "task:"
SORT_SEP, SORT_PAD = 0, 1  # sort's separator and pad tokens; its numbers are the ids above


def task_name(dataset: str) -> str | None:
    """"mqar" for "task:mqar"; None for a corpus name (no "task:" prefix)."""
    return dataset[len(PREFIX):] if dataset.startswith(PREFIX) else None


def settings_problem(c) -> str | None:
    """What makes `c.dataset`'s task settings unusable together, as one line naming the key (config.validate
    raises it, before jax loads, having checked each key's own range); None for good settings or a corpus.

    Unusable includes degenerate: settings under which the answers need no skill the task is about
    (copy's repeat fixed by its first token, sort's lists all equal or of one number)."""
    name = task_name(c.dataset)
    if name is None:
        return None
    if name not in TASKS:
        return f"dataset: {c.dataset!r} is not one of {', '.join(PREFIX + task for task in TASKS)}"
    T, V, t = c.model_config.context_size, c.model_config.alphabet_size, c.task
    if name == "mqar":  # V > T >= 4N also leaves N distinct keys in [1, V // 2) and N values in [V // 2, V)
        N = t.num_kv_pairs
        if T % 2:
            return f"model_config.context_size: mqar needs it even (Zoology's input_seq_len), got {T}"
        if 4 * N > T:
            return f"task.num_kv_pairs: {N} pairs need 4 * {N} = {4 * N} tokens, more than context_size={T}"
        if V <= T:
            return (f"model_config.alphabet_size: mqar needs more ids than context_size={T} "
                    f"(Zoology's vocab_size > input_seq_len), got {V}")
    elif name == "copy":
        L = t.copy_length
        if L < 2:
            return (f"task.copy_length: must be at least 2 (the repeat's first token is unpredictable, "
                    f"the rest is scored), got {L}")
        if 2 * L > T:
            return f"task.copy_length: two copies of {L} tokens need {2 * L}, more than context_size={T}"
        if V < 3:
            return (f"model_config.alphabet_size: copy needs at least 3 ids (with {V}, every token but the repeat's "
                    f"first is the one other id, so the answers are known without copying), got {V}")
    else:
        S = t.sort_length
        if S < 2:
            return f"task.sort_length: must be at least 2 (one number is its own sorted list), got {S}"
        if 2 * S > T:
            return (f"task.sort_length: the list and its sorted copy need 2 * {S} = {2 * S} tokens, "
                    f"more than context_size={T}")
        if V < 4:
            return (f"model_config.alphabet_size: sort needs at least 4 ids (separator, pad and two numbers: with "
                    f"one number every list is already sorted), got {V}")
    return None


def problems_per_sequence(c) -> int:
    """How many independent problems a sequence of `c.dataset`'s task packs, one after another, each
    with the same number of answers: sort's (T + 1) // (2S + 1); 1 for mqar and copy, whose answers
    are all one problem's (and for a corpus). Sequence accuracy counts problems, not sequences
    (`losses.exact_match_sums`), so sort-8's (3 problems a sequence at T = 64) compares with sort-16's (1)."""
    if task_name(c.dataset) != "sort":
        return 1
    return (c.model_config.context_size + 1) // (2 * c.task.sort_length + 1)


def make_batch(c, rng: np.random.Generator, batch_size: int) -> dict[str, np.ndarray]:
    """{"x": int32 [B, T], "y": int32 [B, T], "weight": float32 [B, T]} of task `c.dataset` (whose
    settings have no `settings_problem`): y[:, t] is the token after x[:, t], weight is 1.0 on the answers and 0.0
    elsewhere. Fully determined by rng's state."""
    seq_BxT1, weight_BxT = _GENERATORS[task_name(c.dataset)](c, rng, batch_size)
    return {"x": seq_BxT1[:, :-1], "y": seq_BxT1[:, 1:], "weight": weight_BxT}


def _mqar(c, rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
    T, V, N = c.model_config.context_size, c.model_config.alphabet_size, c.task.num_kv_pairs
    seq_BxT1 = rng.integers(0, V, size=(B, T + 1), dtype=np.int32)  # the non-query tokens
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


def _copy(c, rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
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


def _sort(c, rng: np.random.Generator, B: int) -> tuple[np.ndarray, np.ndarray]:
    T, V, S = c.model_config.context_size, c.model_config.alphabet_size, c.task.sort_length
    P = problems_per_sequence(c)
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


_GENERATORS = {"mqar": _mqar, "copy": _copy, "sort": _sort}


def chance_token_accuracy(c) -> float | None:
    """The token accuracy of a guess that knows the task's format but not its content, drawn as the chance
    line of a task's accuracy figure: mqar, one of the N values seen in the context (1/N, not 1/V: the
    values are few and there to be copied); copy, one of the V - 1 ids a copied token may be; sort, one of
    the V - 2 numbers. None for a corpus."""
    name = task_name(c.dataset)
    if name == "mqar":
        return 1 / c.task.num_kv_pairs
    if name == "copy":
        return 1 / (c.model_config.alphabet_size - 1)
    if name == "sort":
        return 1 / (c.model_config.alphabet_size - 2)
    return None
