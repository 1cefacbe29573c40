"""Reference-named npz export/import: the reference's state-dict names (docs/model.md), PyTorch layouts, the round trip, bad files."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from aed_jax import api
from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import interop
from aed_jax import losses
from aed_jax import model as model_lib
from aed_jax import reference

T, V, D = 8, 97, 16
CONFIGS = {
    "aed": """
from aed_jax.config import base_config

def get_config():
    c = base_config("aed")
    c.model_config.update(dict(
        n_embed=16, n_head=2, n_layer=2, context_size=8, alphabet_size=97, use_bias=True, order_type="ALT",
        add_pos_embed_to_decoder=True, sub_pos_embed_to_decoder="YES_LN", add_ln_before_decoder_ff=True,
        embedding_loss_type="COSINE", embedding_loss_coeff=2.0, detach_type="ENCODER_OUT",
        embedding_ln_type="AVG_CUM_SUM", use_ln_on_encoder_out=True))
    c.model_config.cross_attn_config.update(dict(n_head=4, use_bias=True))
    return c
""",
    "baseline": """
from aed_jax.config import base_config

def get_config():
    c = base_config("baseline")
    c.model_config.update(dict(n_embed=16, n_head=2, n_layer=2, context_size=8, alphabet_size=97, use_bias=True))
    return c
""",
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def run(request, tmp_path_factory):
    """A saved run of each model type (random weights, LayerNorm and bias ones perturbed) and its export."""
    root = tmp_path_factory.mktemp(request.param)
    config_path = root / "config.py"
    config_path.write_text(CONFIGS[request.param])
    config = config_lib.load(str(config_path))
    model = model_lib.make_model(model_lib.ModelConfig.from_config(config))
    params = jax.jit(lambda key: model_lib.init_params(model, key))(jax.random.key(0))
    params = jax.tree_util.tree_map(lambda p: p + 0.1 * np.random.default_rng(p.size).normal(size=p.shape), params)
    api.save_params(str(root / "run"), params, config)
    npz, json_path = reference.export(str(root / "run"), str(root / "out" / "model.npz"))
    return dict(root=root, config=str(config_path), model=model, params=params, npz=npz, json=json_path,
                arrays=dict(np.load(npz)))


def run_cli(argv):
    fv = flags.FlagValues()
    interop.define_flags(fv)
    cli.reporting(interop.main)(fv(["interop"] + argv), fv)


def spec_names(cfg):
    """docs/model.md's reference state-dict names for `cfg`, written out from its list."""
    block = ["multi_attn_head.batch_attn_weights", "multi_attn_head.residual_proj", "feed_forward.linear",
             "feed_forward.residual_proj", "ln1", "ln2"]
    decoder = ["decoder_multi_attn_head.batch_attn_weights", "decoder_multi_attn_head.residual_proj",
               "cross_multi_attn_head.k_v_weights", "cross_multi_attn_head.q_weights",
               "cross_multi_attn_head.residual_proj", "decoder_feed_forward.linear",
               "decoder_feed_forward.residual_proj", "encoder_cross_ln", "decoder_cross_ln", "decoder_ln1",
               "decoder_ln2"]
    if cfg.model_type == "baseline":
        modules = [f"transformer_blocks.{i}.{m}" for i in range(cfg.n_layer) for m in block] + ["ln"]
    else:
        modules = ([f"encoder_transformer_blocks.{i}.{m}" for i in range(cfg.n_layer) for m in block]
                   + [f"decoder_transformer_blocks.{i}.{m}" for i in range(cfg.n_layer) for m in decoder]
                   + ["ffd_ln", "decoder_feed_forward", "ln", "post_sub_pos_ln"])
    names = {f"{m}.{p}" for m in modules for p in ("weight", "bias")}  # use_bias: every one has a bias
    names |= {"token_embedding.weight", "positional_embedding.weight", "output_layer.weight"}
    if cfg.model_type == "aed":
        names |= {"encoder_out_ln.weight", "encoder_out_ln.bias", "embeddings_ln.weight", "embeddings_ln.bias"}
    return names


def test_npz_has_exactly_the_reference_names_in_float32(run):
    cfg, arrays = run["model"].cfg, run["arrays"]
    assert set(arrays) == spec_names(cfg)
    assert all(a.dtype == np.float32 for a in arrays.values())
    np.testing.assert_array_equal(arrays["output_layer.weight"], arrays["token_embedding.weight"])
    assert arrays["token_embedding.weight"].shape == (V, D)
    assert arrays["positional_embedding.weight"].shape == (T + (cfg.model_type == "aed"), D)
    first = "transformer_blocks.0" if cfg.model_type == "baseline" else "encoder_transformer_blocks.0"
    assert arrays[f"{first}.feed_forward.linear.weight"].shape == (4 * D, D)  # PyTorch Linear: [out, in]
    if cfg.model_type == "aed":
        assert arrays["decoder_transformer_blocks.1.cross_multi_attn_head.k_v_weights.weight"].shape == (2 * D, D)


def _layer_norm(x, sd, name):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd.get(f"{name}.bias", 0.0)


def _linear(x, sd, name):  # torch.nn.Linear: x @ W.T + b, W [out, in]
    return x @ sd[f"{name}.weight"].T + sd.get(f"{name}.bias", 0.0)


def _attention(q, k, v, n_head):
    t, d = q.shape
    q, k, v = (a.reshape(t, n_head, d // n_head).transpose(1, 0, 2) for a in (q, k, v))
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(d // n_head) + np.triu(np.full((t, t), -np.inf), 1)[None]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ v).transpose(1, 0, 2).reshape(t, d)


def _block(x, sd, p, n_head):
    q, k, v = np.split(_linear(_layer_norm(x, sd, f"{p}.ln1"), sd, f"{p}.multi_attn_head.batch_attn_weights"), 3, -1)
    x = x + _linear(_attention(q, k, v, n_head), sd, f"{p}.multi_attn_head.residual_proj")
    return x + _feed_forward(_layer_norm(x, sd, f"{p}.ln2"), sd, f"{p}.feed_forward")


def _feed_forward(x, sd, p):
    h = _linear(x, sd, f"{p}.linear")
    h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))  # exact GELU
    return _linear(h, sd, f"{p}.residual_proj")


def reference_logits(sd, cfg, x):
    """The reference's forward (eval mode, one sequence) in numpy, from the state dict alone."""
    pos = sd["positional_embedding.weight"]
    h = sd["token_embedding.weight"][x] + pos[:len(x)]
    if cfg.model_type == "baseline":
        for i in range(cfg.n_layer):
            h = _block(h, sd, f"transformer_blocks.{i}", cfg.n_head)
        return _layer_norm(h, sd, "ln") @ sd["output_layer.weight"].T
    for i in range(cfg.n_layer):
        h = _block(h, sd, f"encoder_transformer_blocks.{i}", cfg.n_head)
    enc = h
    d = _linear(_layer_norm(enc, sd, "ffd_ln") if cfg.add_ln_before_decoder_ff else enc, sd, "decoder_feed_forward")
    if cfg.add_pos_embed_to_decoder:
        d = d + pos[1:len(x) + 1]
    for i in range(cfg.n_layer):
        p = f"decoder_transformer_blocks.{i}"

        def self_attn(d):
            q, k, v = np.split(_linear(_layer_norm(d, sd, f"{p}.decoder_ln1"), sd,
                                       f"{p}.decoder_multi_attn_head.batch_attn_weights"), 3, -1)
            return d + _linear(_attention(q, k, v, cfg.n_head), sd, f"{p}.decoder_multi_attn_head.residual_proj")

        def cross_attn(d):
            k, v = np.split(_linear(_layer_norm(enc, sd, f"{p}.encoder_cross_ln"), sd,
                                    f"{p}.cross_multi_attn_head.k_v_weights"), 2, -1)
            q = _linear(_layer_norm(d, sd, f"{p}.decoder_cross_ln"), sd, f"{p}.cross_multi_attn_head.q_weights")
            return d + _linear(_attention(q, k, v, cfg.cross_heads), sd, f"{p}.cross_multi_attn_head.residual_proj")

        d = cross_attn(self_attn(d)) if cfg.order_type == "ORIGINAL" else self_attn(cross_attn(d))
        d = d + _feed_forward(_layer_norm(d, sd, f"{p}.decoder_ln2"), sd, f"{p}.decoder_feed_forward")
    out = _layer_norm(d, sd, "ln")
    if cfg.sub_pos_embed_to_decoder != "NO":
        out = out - pos[1:len(x) + 1]
        if cfg.sub_pos_embed_to_decoder == "YES_LN":
            out = _layer_norm(out, sd, "post_sub_pos_ln")
    return out @ sd["output_layer.weight"].T


def test_npz_computes_the_model_with_reference_semantics(run):
    """A numpy transcription of the reference forward, reading only the npz, gives the model's logits."""
    x = np.random.default_rng(0).integers(0, V, (2, T))
    logits, _ = run["model"].apply({"params": run["params"]}, x)
    expected = np.stack([reference_logits({k: v.astype(np.float64) for k, v in run["arrays"].items()},
                                          run["model"].cfg, row) for row in x])
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_export_then_import_gives_identical_parameters_and_logits(run, capsys):
    workdir = str(run["root"] / "imported")
    run_cli(["import", "--npz", run["npz"], "--config", run["config"], "--workdir", workdir])
    assert "checkpoint 0" in capsys.readouterr().out
    model, params, config, _ = api.load(workdir)
    assert model.cfg == run["model"].cfg and config.workdir == workdir
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, jax.tree_util.tree_map(np.asarray, run["params"]))
    x = np.random.default_rng(1).integers(0, V, (2, T))
    np.testing.assert_array_equal(model.apply({"params": params}, x)[0],
                                  run["model"].apply({"params": run["params"]}, x)[0])
    run_cli(["export", "--workdir", workdir, "--out", str(run["root"] / "again.npz")])
    again = np.load(run["root"] / "again.npz")
    assert set(again.files) == set(run["arrays"])
    assert all(np.array_equal(again[k], run["arrays"][k]) for k in again.files)


def test_json_is_the_reference_model_config_with_integer_codes(run):
    with open(run["json"]) as f:
        ref = json.load(f)
    cfg = run["model"].cfg
    assert set(ref) == set(reference.REFERENCE_KEYS[cfg.model_type])  # the declaration's keys, none of ours
    assert ref["n_embed"] == D and ref["context_size"] == T and ref["alphabet_size"] == V
    if cfg.model_type == "aed":
        assert (ref["order_type"], ref["sub_pos_embed_to_decoder"], ref["embedding_loss_type"], ref["detach_type"],
                ref["embedding_ln_type"]) == (2, 3, 3, 3, 3)
        assert ref["cross_attn_config"] == {"n_head": 4, "use_bias": True}
        named = dict(ref, order_type="ALT", embedding_loss_type="COSINE_SIM", embedding_ln_type="AVG_CUM_SUM")
        assert reference.model_config_from_reference(named, "aed") == cfg
    assert reference.model_config_from_reference(dict(ref, use_flash=True), cfg.model_type) == cfg


def _import_error(run, capsys, npz, workdir=None):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["import", "--npz", str(npz), "--config", run["config"],
                 "--workdir", workdir or str(run["root"] / "never")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_import_names_every_missing_extra_and_misshaped_key(run, capsys):
    arrays = dict(run["arrays"])
    del arrays["ln.weight"], arrays["positional_embedding.weight"]
    arrays["head.weight"] = np.zeros(3, np.float32)
    arrays["token_embedding.weight"] = arrays["output_layer.weight"] = np.zeros((V, D + 1), np.float32)
    bad = run["root"] / "bad.npz"
    np.savez(bad, **arrays)
    err = _import_error(run, capsys, bad)
    for text in ("missing keys ['ln.weight', 'positional_embedding.weight']", "unexpected keys ['head.weight']",
                 f"output_layer.weight ({V}, {D + 1}) (expected ({V}, {D}))",
                 f"token_embedding.weight ({V}, {D + 1}) (expected ({V}, {D}))"):
        assert text in err


def test_import_rejects_untied_output_layer_disagreeing_json_and_a_used_workdir(run, capsys):
    arrays = dict(run["arrays"], **{"output_layer.weight": run["arrays"]["output_layer.weight"] + 1})
    np.savez(run["root"] / "untied.npz", **arrays)
    assert "ties them" in _import_error(run, capsys, run["root"] / "untied.npz")
    os.makedirs(run["root"] / "other", exist_ok=True)
    np.savez(run["root"] / "other" / "model.npz", **run["arrays"])
    with open(run["json"]) as f:
        ref = dict(json.load(f), n_layer=3)
    with open(run["root"] / "other" / "model.json", "w") as f:
        json.dump(ref, f)
    assert "disagree on n_layer (3 there, 2 here)" in _import_error(run, capsys, run["root"] / "other" / "model.npz")
    assert "already has checkpoints" in _import_error(run, capsys, run["npz"], str(run["root"] / "run"))
    assert "no such file" in _import_error(run, capsys, run["root"] / "missing.npz")


def test_cli_usage_and_export_errors(run, capsys):
    for argv, message in [(["convert"], "usage:"), (["export", "--workdir", "/nonexistent"], "needs --out"),
                          (["export", "--workdir", "/nonexistent", "--out", "x.npz"], "does not exist")]:
        with pytest.raises(SystemExit):
            run_cli(argv)
        assert message in capsys.readouterr().err


def test_export_onto_a_folder_or_into_a_read_only_one_is_one_line_and_leaves_nothing(run, capsys, tmp_path):
    """An --out that is a folder, or in a folder that cannot be written: one line naming it, and no
    half-written file beside it."""
    folder = tmp_path / "a_folder.npz"
    folder.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for out in (folder, locked / "model.npz"):
            if out.parent == locked and os.access(locked, os.W_OK):
                continue  # root writes anywhere: the read-only case cannot be made here
            with pytest.raises(SystemExit):
                run_cli(["export", "--workdir", str(run["root"] / "run"), "--out", str(out)])
            err = capsys.readouterr().err
            start = f"error: --out {out}: cannot write " if out == folder else f"error: --out {locked}: "  # before work
            assert err.startswith(start) and err.count("\n") == 1, err
            assert not [n for n in os.listdir(out.parent) if n.endswith(".tmp")]
    finally:
        locked.chmod(0o700)


def test_a_broken_model_json_beside_the_npz_is_one_line(run, capsys):
    os.makedirs(run["root"] / "broken", exist_ok=True)
    np.savez(run["root"] / "broken" / "model.npz", **run["arrays"])
    for text, message in (("{not json", "unreadable"), ("[1, 2]", "not a JSON object")):
        (run["root"] / "broken" / "model.json").write_text(text)
        assert message in _import_error(run, capsys, run["root"] / "broken" / "model.npz")


# What config.py allows and the reference lacks, by model type: every key of ours away from its
# default and every value of an enum key the reference has no code for. test_ours_only_is_every_option_
# the_declaration_leaves_out keeps it whole, so each one is sent through export and import below.
OURS_ONLY = {
    "aed": (("position_embedding_type", "ROPE"), ("n_layer_encoder", 3), ("n_layer_decoder", 1),
            ("embedding_aggregation", "CAUSAL_CONV"), ("embedding_aggregation_kernel_size", 4),
            ("embedding_loss_type", "HUBER"), ("embedding_loss_type", "NORM_MSE"),
            ("embedding_loss_type", "CENTERED_COSINE"), ("embedding_var_coeff", 0.5)),
    "baseline": (("position_embedding_type", "ROPE"), ("sub_pos_embed_to_decoder", "YES_LN")),
}
CHOICES = {"order_type": config_lib.ORDER_TYPES, "sub_pos_embed_to_decoder": config_lib.SUB_POS_EMBED_TYPES,
           "embedding_loss_type": config_lib.EMBEDDING_LOSS_TYPES, "detach_type": config_lib.DETACH_TYPES,
           "embedding_ln_type": config_lib.EMBEDDING_LN_TYPES}


@pytest.mark.parametrize("model_type", sorted(OURS_ONLY))
def test_ours_only_is_every_option_the_declaration_leaves_out(model_type):
    """The declaration names only our keys and values, and OURS_ONLY lists all the rest of ours."""
    ours = config_lib.base_config(model_type).model_config
    theirs = reference.REFERENCE_KEYS[model_type]
    assert set(theirs) <= set(ours.keys())
    assert all(set(names) <= set(CHOICES[key]) for key, names in reference.ENUMS.items())
    keys = {key for key, _ in OURS_ONLY[model_type] if key not in theirs}
    values = {(key, value) for key, value in OURS_ONLY[model_type] if key in theirs}
    assert keys == set(ours.keys()) - set(theirs)
    assert values == {(key, value) for key in reference.ENUMS if key in theirs
                      for value in CHOICES[key] if value not in reference.ENUMS[key]}


def _config_file(root, model_type: str, **options) -> str:
    """A config file of `model_type` with `options` set in model_config."""
    config_path = root / "config.py"
    config_path.write_text(CONFIGS[model_type].replace(
        "    return c", f"    c.model_config.update({options!r})\n    return c"))
    return str(config_path)


def _saved_run(root, model_type: str, **options) -> tuple[str, str]:
    """`_config_file`, and a run of it saved (zeros)."""
    config_path = _config_file(root, model_type, **options)
    config = config_lib.load(config_path)
    abstract = model_lib.ModelConfig.from_config(config).abstract_params()
    api.save_params(str(root / "run"), jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), abstract), config)
    return config_path, str(root / "run")


def _refused_both_ways(root, config_path, workdir, capsys, expected):
    """export of `workdir` and import with `config_path`: one line each, `expected` with the verb, nothing
    written. The import's npz is never read (there is none): the config is refused first."""
    npz = str(root / "model.npz")
    for use, argv in (("export", ["export", "--workdir", workdir, "--out", str(root / "out" / "m.npz")]),
                      ("import", ["import", "--npz", npz, "--config", config_path, "--workdir", str(root / "new")])):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.count("\n") == 1, err
        assert err == f"error: the reference implementation has {expected.format(use=use)}\n"
    assert not os.path.exists(root / "out") and not os.path.exists(root / "new")


@pytest.mark.parametrize("model_type,key,value", [(t, k, v) for t in sorted(OURS_ONLY) for k, v in OURS_ONLY[t]])
def test_each_option_the_reference_lacks_is_refused_both_ways_in_one_line(model_type, key, value, tmp_path, capsys):
    """A key of ours away from its default, or an enum value the reference has no code for: export
    writes nothing, import refuses the config, each in one line naming the key and the value."""
    config_path, workdir = _saved_run(tmp_path, model_type, **{key: value})
    default = config_lib.base_config(model_type).model_config[key]
    if key in reference.REFERENCE_KEYS[model_type]:
        expected = f"no model_config.{key} {value!r} ({{use}} needs one of {', '.join(reference.ENUMS[key])})"
    else:
        expected = f"no model_config.{key} {value!r} (an option of ours: {{use}} needs its default {default!r})"
    _refused_both_ways(tmp_path, config_path, workdir, capsys, expected)


def test_an_option_added_to_config_alone_is_refused_by_the_declaration(tmp_path, capsys, monkeypatch):
    """A contributor adds an L1 embedding loss to config.py and losses.py, and nothing to reference.py:
    a run with it exports and imports as one line naming the value, never a traceback."""
    terms = losses.embedding_loss_terms
    monkeypatch.setattr(config_lib, "EMBEDDING_LOSS_TYPES", config_lib.EMBEDDING_LOSS_TYPES + ("L1",))
    monkeypatch.setattr(losses, "embedding_loss_terms", lambda avg, enc, loss_type: (
        jnp.mean(jnp.abs(avg - enc), axis=-1) if loss_type == "L1" else terms(avg, enc, loss_type)))
    config_path, workdir = _saved_run(tmp_path, "aed", embedding_loss_type="L1")
    assert model_lib.ModelConfig.from_config(config_lib.load(config_path)).embedding_loss_type == "L1"
    _refused_both_ways(tmp_path, config_path, workdir, capsys,
                       "no model_config.embedding_loss_type 'L1' ({use} needs one of NONE, MSE, COSINE, LOG_COSINE)")


@pytest.mark.fast
def test_several_options_the_reference_lacks_are_named_in_one_line(tmp_path):
    config = config_lib.load(_config_file(tmp_path, "aed", position_embedding_type="ROPE",
                                          embedding_loss_type="HUBER"))
    with pytest.raises(reference.InteropError) as error:
        reference.reference_config(config)
    assert str(error.value) == (
        "the reference implementation has no model_config.embedding_loss_type 'HUBER' (export needs one of NONE, "
        "MSE, COSINE, LOG_COSINE); no model_config.position_embedding_type 'ROPE' (an option of ours: export "
        "needs its default 'LEARNED')")


@pytest.mark.fast
def test_a_reference_model_config_with_a_key_of_ours_is_refused():
    """A model.json beside an imported npz is the reference's: a key of ours in it is not its model's."""
    with pytest.raises(reference.InteropError, match=r"\['position_embedding_type'\] are not keys of the "
                                                     r"reference's baseline model"):
        reference.model_config_from_reference({"n_layer": 2, "position_embedding_type": "LEARNED"}, "baseline")
