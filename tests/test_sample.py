"""Cached decoding against the full forward, greedy equivalence with and without the cache, the CLI."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from aed_jax import api
from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import decoding
from aed_jax import memory
from aed_jax import model as model_lib
from aed_jax import sample

T = 16
SMALL = dict(alphabet_size=97, context_size=T, n_embed=32, n_head=2, n_layer=2)
VARIANTS = {
    "aed": dict(sub_pos_embed_to_decoder="YES_NO_LN"),
    "aed_every_option": dict(order_type="ALT", sub_pos_embed_to_decoder="YES_LN", add_pos_embed_to_decoder=True,
                             add_ln_before_decoder_ff=True, use_bias=True, cross_n_head=4, cross_use_bias=True),
    "baseline": dict(model_type="baseline"),
    # ROPE: keys are cached already turned by their positions; the "next position" table in both uses.
    "aed_rope": dict(position_embedding_type="ROPE", sub_pos_embed_to_decoder="YES_LN", add_pos_embed_to_decoder=True,
                     cross_n_head=4),
    "baseline_rope": dict(model_type="baseline", position_embedding_type="ROPE"),
}


@functools.cache
def build(name):
    """A small model with its matrices scaled up, so greedy decoding does not just repeat a token,
    and its jitted full forward."""
    model = model_lib.make_model(model_lib.ModelConfig(**{**SMALL, **VARIANTS[name]}))
    params = model_lib.init_params(model, jax.random.key(0))
    params = jax.tree_util.tree_map(lambda p: p * 8.0 if p.ndim == 2 else p, params)
    return model, params, jax.jit(lambda p, x: model.apply({"params": p}, x)[0])


@pytest.mark.parametrize("name", ["aed_every_option", "baseline", "aed_rope", "baseline_rope"])
def test_cached_decoding_matches_the_full_forward(name):
    """A 5-token prefill then one token a call reproduce the full window's logits at every position."""
    model, params, forward = build(name)
    decode = jax.jit(lambda p, c, x: model.apply({"params": p, "cache": c}, x, mutable=["cache"]))
    prefill = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["cache"]))
    x = np.asarray(jax.random.randint(jax.random.key(1), (2, T), 0, SMALL["alphabet_size"]))
    (logits, _), variables = prefill(params, x[:, :5])
    rows = [logits]
    for i in range(5, T):
        (logits, _), variables = decode(params, variables["cache"], x[:, i:i + 1])
        rows.append(logits)
    np.testing.assert_allclose(np.concatenate(rows, axis=1), forward(params, x), rtol=1e-4, atol=1e-4)


def naive_greedy(forward, params, prompt, n):
    """The reference's loop: the window (the last T tokens) re-run for every token. The window is
    padded to T to compile once; causality (tests/test_model.py) makes the padding inert."""
    seq = np.asarray(prompt)
    for _ in range(n):
        window = seq[:, -T:]
        logits = forward(params, np.pad(window, ((0, 0), (0, T - window.shape[1]))))
        seq = np.concatenate([seq, np.argmax(logits[:, window.shape[1] - 1], axis=-1)[:, None]], axis=1)
    return seq


@pytest.mark.parametrize("name", ["aed", "baseline", "aed_rope", "baseline_rope"])
@pytest.mark.parametrize("prompt_len,new", [(5, 14), (20, 3)])  # crosses the context; starts past it
def test_greedy_with_cache_gives_the_tokens_of_greedy_without(name, prompt_len, new):
    model, params, forward = build(name)
    prompt = np.asarray(jax.random.randint(jax.random.key(2), (2, prompt_len), 0, SMALL["alphabet_size"]))
    stats = {}
    cached = decoding.generate(model, params, prompt, new, greedy=True, stats=stats)
    uncached = decoding.generate(model, params, prompt, new, greedy=True, use_cache=False)
    expected = naive_greedy(forward, params, prompt, new)
    np.testing.assert_array_equal(cached, expected)
    np.testing.assert_array_equal(uncached, expected)
    if prompt_len < T:
        assert len(set(expected[:, prompt_len:].ravel().tolist())) > 3  # a real test, not one repeated token
        assert stats == {"prefill": 1, "step": T - prompt_len, "full": prompt_len + new - 1 - T}
    else:
        assert stats == {"prefill": 0, "step": 0, "full": new}


@pytest.mark.parametrize("name", ["aed", "baseline_rope"])
@pytest.mark.parametrize("prompt_len,new", [(1, 20), (5, 14), (20, 3)])  # crosses the context; starts past it
@pytest.mark.parametrize("options", [dict(greedy=True), dict(temperature=0.9, top_k=20, seed=7),
                                     dict(temperature=1.3, seed=2, use_cache=False)])
def test_one_compiled_program_gives_the_tokens_of_the_per_token_loop(name, prompt_len, new, options):
    """The whole generation in one jitted program (prefill, cached steps in a fori_loop, sliding
    windows) makes the per-token loop's calls with its keys: the same tokens, greedy or sampled."""
    model, params, _ = build(name)
    prompt = np.asarray(jax.random.randint(jax.random.key(3), (3, prompt_len), 0, SMALL["alphabet_size"]))
    one, per_token = {}, {}
    compiled = decoding.generate(model, params, prompt, new, stats=one, **options)
    np.testing.assert_array_equal(compiled, decoding.generate(model, params, prompt, new, stats=per_token,
                                                            compiled=False, **options))
    assert one == per_token
    assert compiled.shape == (3, prompt_len + new) and len(set(compiled[:, prompt_len:].ravel().tolist())) >= 3


def test_sampling_is_seeded_and_the_same_with_or_without_the_cache():
    model, params, _ = build("aed")
    prompt = np.zeros((3, 4), np.int32)
    run = lambda **kw: decoding.generate(model, params, prompt, 8, **{"temperature": 1.0, "top_k": 20, **kw})
    first = run(seed=3)
    np.testing.assert_array_equal(first, run(seed=3))
    np.testing.assert_array_equal(first, run(seed=3, use_cache=False))
    assert not np.array_equal(first, run(seed=4))
    assert len({tuple(row) for row in first[:, 4:].tolist()}) > 1  # each row draws its own tokens


@pytest.mark.fast
def test_greedy_argmax_is_jnps_argmax_with_ties_nans_and_infinities():
    logits = np.random.default_rng(0).standard_normal((6, 50257)).astype(np.float32)
    logits[1, [7, 9]] = 100.0  # a tie: the first
    logits[2, [11, 20]] = np.nan  # NaNs: the first NaN, as jnp.argmax
    logits[3] = -np.inf
    logits[4, -1] = np.inf
    got = np.asarray(decoding._argmax(jnp.asarray(logits)))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))
    assert got.dtype == np.int32 and list(got[1:5]) == [7, 11, 0, 50256]


@pytest.mark.fast
def test_top_k_draws_only_among_the_k_largest():
    logits = jax.random.normal(jax.random.key(0), (4, 50))
    top3 = np.argsort(np.asarray(logits), axis=-1)[:, -3:]
    for seed in range(5):
        key = jax.random.key(seed)
        np.testing.assert_array_equal(decoding._pick(logits, key, 1.0, 1, False), np.argmax(logits, axis=-1))
        drawn = np.asarray(decoding._pick(logits, key, 2.0, 3, False))
        assert all(d in row for d, row in zip(drawn, top3))


@pytest.mark.parametrize("temperature,top_k", [(0.0, 10), (-1.0, 10), (1.0, -1), (1.0, 98)])
def test_generate_rejects_bad_sampling_options(temperature, top_k):
    model, params, _ = build("baseline")
    with pytest.raises(decoding.SampleError):
        decoding.generate(model, params, np.zeros((1, 2), np.int32), 2, temperature=temperature, top_k=top_k)


# The command line, on a tiny GPT-2-vocabulary run saved as the trainer saves it.

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("run"))
    config = config_lib.base_config("aed")
    config.model_config.update(dict(n_embed=16, n_head=2, n_layer=1, context_size=8))
    model = model_lib.make_model(model_lib.ModelConfig.from_config(config))
    api.save_params(path, jax.jit(lambda key: model_lib.init_params(model, key))(jax.random.key(0)), config)
    return path


def run_cli(argv):
    fv = flags.FlagValues()
    sample.define_flags(fv)
    argv = fv(["sample"] + argv)
    cli.reporting(sample.main)(argv, fv)


@pytest.mark.fast
def test_cli_prints_the_prompt_and_its_continuations(workdir, capsys):
    run_cli(["--workdir", workdir, "--prompt", "Hello world", "--max_new_tokens", "12", "--num_samples", "2"])
    texts = capsys.readouterr().out.split("---------------\n")
    assert len(texts) == 3 and texts[2] == ""
    assert all(text.startswith("Hello world") and len(text) > len("Hello world") for text in texts[:2])


@pytest.mark.slow  # over 10 s on one core: the quick step stays within its budget
def test_cli_benchmark_prints_both_rates(workdir, capsys):
    run_cli(["--workdir", workdir, "--benchmark", "--max_new_tokens", "10", "--greedy"])
    out = capsys.readouterr().out
    assert "with cache" in out and "without cache" in out and "same tokens: yes" in out


@pytest.mark.parametrize("argv,message", [
    (["--workdir", "/nonexistent/run"], "does not exist"),
    (["--workdir", "{empty}"], "has no checkpoints"),
    (["--workdir", "{run}", "--checkpoint", "7"], "no checkpoint '7'; saved steps: [0]"),
    (["--workdir", "{run}", "--prompt", ""], "tokenizes to no tokens"),
    (["--workdir", "{run}", "--temperature", "0"], "--temperature must be > 0"),
    (["--workdir", "{run}", "--top_k", "-1"], "--top_k must be between 1 and"),
    (["--workdir", "{run}", "--top_k", "50258"], "--top_k must be between 1 and"),
    (["--workdir", "{run}", "--num_samples", "0"], "--num_samples must be at least 1"),
    (["--workdir", "{run}", "--max_new_tokens", "1000000000000"], "of available host memory; pass --max_new_tokens"),
    (["--workdir", "{run}", "--num_samples", "1000000"], "--num_samples 1000000: a decoding call needs"),
])
def test_cli_bad_input_is_one_line_and_exit_1(workdir, tmp_path, capsys, argv, message):
    argv = [a.format(empty=str(tmp_path), run=workdir) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_task_run_is_refused_in_one_line_saying_what_scores_it(tmp_path, capsys):
    """A task model's ids are no text: sample used to fail on its own defaults (top_k 200 over a 128-id
    vocabulary), and no text prompt fits its ids."""
    config = config_lib.base_config("aed")
    config.model_config.update(dict(n_embed=16, n_head=2, n_layer=1, context_size=16, alphabet_size=128))
    config.dataset = "task:copy"
    config.task.copy_length = 4
    model = model_lib.make_model(model_lib.ModelConfig.from_config(config))
    api.save_params(str(tmp_path), jax.jit(lambda key: model_lib.init_params(model, key))(jax.random.key(0)), config)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["--workdir", str(tmp_path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (f"error: {tmp_path} is a task:copy run: its ids are no text, so sample has no "
                                       "prompt to continue; score its answers with python -m aed_jax.evaluate "
                                       f"--workdir {tmp_path}\n")


def test_a_request_beyond_memory_is_refused_with_the_largest_that_fits(workdir, monkeypatch):
    """With 1 GiB free, 2 samples of 3 + N int32 tokens fit on the host up to N = 2**30 / 8 - 3; a
    batch whose generation needs more device memory (XLA's buffer assignment of the program that
    runs) is refused with a smaller one that fits."""
    monkeypatch.setattr(memory, "host_available", lambda: 2**30)
    model, params, _, _ = api.load(workdir)
    decoding.check_memory(model, params, 2, 3, 2**20)
    with pytest.raises(decoding.SampleError, match=rf"need 1\.0 GiB, .* 1\.0 GiB of available host memory; "
                                                 rf"pass --max_new_tokens {2**27 - 3} or less$"):
        decoding.check_memory(model, params, 2, 3, 2**27 - 2)
    with pytest.raises(decoding.SampleError, match=r"^--num_samples 3000: a decoding call needs .* pass --num_samples"
                                                 r" (\d+) or less$") as error:
        decoding.check_memory(model, params, 3000, 3, 1)  # the prompt's logits alone: 3000 x 3 x 50257 x 4 bytes = 1.7 GiB
    fits = int(error.value.args[0].split()[-3])
    assert 1 <= fits < 3000
    decoding.check_memory(model, params, fits, 3, 1)  # the suggestion fits by the same measure


@pytest.mark.parametrize("use_cache", [True, False])
def test_the_memory_check_compiles_the_program_that_generates(workdir, caplog, use_cache):
    """sample measures the program it runs: the check and the generation after it compile one
    program of sample's, once (the check's compile is the one the generation reuses)."""
    model, params, _, _ = api.load(workdir)
    decoding._program.cache_clear()
    with caplog.at_level("WARNING"), jax.log_compiles(True):
        decoding.check_memory(model, params, 2, 3, 5, use_cache=use_cache, greedy=True)
        decoding.generate(model, params, np.ones((2, 3), np.int32), 5, use_cache=use_cache, greedy=True)
    ours = ("jit(decode)", "jit(prefill)", "jit(full)", "jit(step)")
    compiled = [r.getMessage().split()[4] for r in caplog.records
                if r.getMessage().startswith("Finished XLA compilation of") and r.getMessage().split()[4] in ours]
    assert compiled == ["jit(decode)"]
