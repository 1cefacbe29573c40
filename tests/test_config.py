"""Config validation, the keys' meanings (--show_config), and the one-line errors of the command lines."""
import math
import os
import re
import subprocess
import sys

from absl import flags
import pytest

from aed_jax import cli
from aed_jax import config as config_lib
from aed_jax import model as model_lib
from aed_jax import summary
from aed_jax import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mse_config():
    return config_lib.load(os.path.join(ROOT, "configs", "mse_pos_sub.py"))


@pytest.mark.parametrize("key,value,match", [
    ("n_head", 7, r"model_config\.n_head: n_embed=150 is not divisible by n_head=7"),
    ("embedding_loss_type", "FOO", r"model_config\.embedding_loss_type: 'FOO' is not one of NONE, MSE"),
    ("sub_pos_embed_to_decoder", "YES", r"model_config\.sub_pos_embed_to_decoder: 'YES' is not one of"),
    ("order_type", "REVERSED", r"model_config\.order_type"),
    ("detach_type", "BOTH", r"model_config\.detach_type"),
    ("embedding_loss_coeff", 0.0, r"model_config\.embedding_loss_coeff: must be a finite number > 0, got 0.0"),
    ("dropout_rate", 1.5, r"model_config\.dropout_rate"),
])
def test_bad_values_name_their_key(key, value, match):
    c = mse_config()
    c.model_config[key] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c)


def test_loss_none_requires_the_loss_keys_unset():
    c = config_lib.load(os.path.join(ROOT, "configs", "no_loss_no_pos.py"))
    c.model_config.embedding_loss_coeff = 1.0
    with pytest.raises(config_lib.ConfigError, match=r"embedding_loss_coeff: must be unset .* NONE"):
        config_lib.validate(c)


def test_a_loss_requires_its_keys():
    c = mse_config()
    c.model_config.detach_type = None
    with pytest.raises(config_lib.ConfigError, match=r"detach_type: must be set when embedding_loss_type is MSE"):
        config_lib.validate(c)


def test_misspelt_key_fails_where_it_is_set():
    c = config_lib.base_config("aed")
    with pytest.raises(AttributeError, match="n_embd"):
        c.model_config.n_embd = 3


def test_baseline_refuses_aed_keys():
    assert "embedding_loss_type" not in config_lib.base_config("baseline").model_config


@pytest.mark.parametrize("model_type", config_lib.MODEL_TYPES)
def test_the_model_defaults_are_base_configs(model_type):
    """ModelConfig's own defaults (for building a model by hand) are the run config's: they cannot drift."""
    assert model_lib.ModelConfig(model_type=model_type) == model_lib.ModelConfig.from_config(
        config_lib.base_config(model_type), dtype=model_lib.ModelConfig.dtype)


def test_tiny_baseline_is_tiny_without_the_aed():
    """configs/tiny_baseline.py, the baseline the README compares configs/tiny.py with, has tiny's width,
    window and every key of its recipe, and tiny's 2 + 2 blocks as 4."""
    tiny, baseline = (config_lib.load(os.path.join(ROOT, "configs", f"{name}.py")) for name in ("tiny", "tiny_baseline"))
    assert baseline.model_type == "baseline"
    for key in ("n_embed", "n_head", "context_size", "dropout_rate", "use_bias"):
        assert baseline.model_config[key] == tiny.model_config[key], key
    assert baseline.model_config.n_layer == 2 * tiny.model_config.n_layer
    for key in config_lib.SCHEDULE_KEYS + ("batch_size", "gradient_accumulation_steps", "lr", "min_lr", "warmup_iters",
                                         "lr_decay_iters", "weight_decay", "random_seed", "dataset"):
        assert baseline[key] == tiny[key], key


def test_every_key_has_one_kind():
    """The kinds of key are a partition of the top-level keys that are not data or task settings."""
    kinds = (config_lib.MODEL_KEYS, config_lib.SCHEDULE_KEYS, config_lib.LOCATION_KEYS, config_lib.EXECUTION_KEYS)
    flat = [k for kind in kinds for k in kind]
    assert len(flat) == len(set(flat))
    others = set(config_lib.base_config("aed").keys()) - set(flat)
    assert others == {"batch_size", "gradient_accumulation_steps", "lr", "min_lr", "warmup_iters", "lr_decay_iters",
                      "decay_lr", "weight_decay", "beta1", "beta2", "random_seed", "dataset", "task"}
    assert set(config_lib.MODEL_EXECUTION_KEYS) <= set(config_lib.EXECUTION_KEYS + config_lib.MODEL_KEYS)


def test_micro_batch_size_must_divide_the_effective_batch():
    c = mse_config()
    c.micro_batch_size = 7
    with pytest.raises(config_lib.ConfigError, match="micro_batch_size"):
        config_lib.validate(c)


def test_every_float_key_must_be_finite():
    """NaN and inf are refused for every float key, present or future, naming the key."""
    floats = [key for key, value in config_lib.leaves(mse_config()) if isinstance(value, float)]
    assert {"lr", "min_lr", "weight_decay", "beta1", "beta2", "model_config.dropout_rate",
            "model_config.embedding_loss_coeff"} <= set(floats)
    for key in floats:
        for bad in (math.nan, math.inf, -math.inf):
            c = mse_config()
            c.update_from_flattened_dict({key: bad})
            message = rf"^{re.escape(key)}: must be a finite number .*, got -?(nan|inf)$"
            with pytest.raises(config_lib.ConfigError, match=message):
                config_lib.validate(c)


@pytest.mark.parametrize("key,value,match", [
    ("min_lr", 1.0, r"^min_lr: must be a finite number in \[0, lr=0.0009\], got 1.0$"),
    ("min_lr", -1e-5, r"^min_lr: "),
    ("lr", 0.0, r"^lr: must be a finite number > 0"),
    ("weight_decay", -0.1, r"^weight_decay: must be a finite number >= 0"),
    ("beta1", 1.0, r"^beta1: must be a finite number in \[0, 1\)"),
    ("beta2", -0.5, r"^beta2: "),
    ("random_seed", -1, r"^random_seed: must be in \[0, 2\*\*32\)"),
    ("warmup_iters", -5, r"^warmup_iters: must be an integer >= 0, got -5$"),
    ("lr_decay_iters", -1, r"^lr_decay_iters: must be an integer >= 0, got -1$"),
    ("lr_decay_iters", 300, r"^lr_decay_iters: must exceed warmup_iters=300 \(the decay starts where the warmup "
                            r"ends\), got 300$"),
    ("dataset", "", r"^dataset: must be a corpus name \(wiki_vital is built in; yours: the --name you gave prepare\) "
                    r"or task:<name>, got ''$"),
    ("dataset", "data/foo/", r"^dataset: 'data/foo/' is a path, and dataset is a name: for the token files in "
                             r"data/foo, pass --config\.dataset=foo --config\.data_dir=data/foo$"),
    ("dataset", "task:nope",
     rf"^dataset: 'task:nope' is not one of {', '.join(tasks.PREFIX + t for t in tasks.TASKS)}$"),
    ("save_interval", 700, r"^save_interval: must be a positive multiple of est_interval=500 \(best/ is chosen among "
                           r"the checkpoints' estimates\), or None, got 700$"),
    ("save_interval", 0, r"^save_interval: must be a positive multiple of est_interval=500 .*, got 0$"),
])
def test_numbers_out_of_range_name_their_key(key, value, match):
    c = mse_config()
    c[key] = value
    with pytest.raises(config_lib.ConfigError, match=match):
        config_lib.validate(c)


def test_every_key_has_a_meaning_and_show_config_lists_them():
    """The meanings are the comments in base_config: every key of both model types has one, and
    describe() prints each key once with its value."""
    meanings = config_lib.meanings()
    for model_type in config_lib.MODEL_TYPES:
        keys = [key for key, _ in config_lib.leaves(config_lib.base_config(model_type))]
        assert all(meanings.get(key) for key in keys), [key for key in keys if not meanings.get(key)]
    assert meanings["model_config.n_embed"] == "D: embedding width"
    c = mse_config()
    c.lr = 0.25
    lines = config_lib.describe(c).splitlines()
    assert lines[0].split() == ["key", "value", "meaning"]
    assert len(lines) == 1 + len(list(config_lib.leaves(c)))
    row = next(line for line in lines if line.startswith("lr "))
    assert row.split()[:2] == ["lr", "0.25"] and row.endswith(meanings["lr"])


def test_file_errors_are_one_line_naming_the_file(tmp_path):
    files = {
        "syntax.py": ("def get_config(:\n", r"syntax\.py, line 1: syntax error"),
        "none.py": ("X = 1\n", r"none\.py: defines no get_config\(\) function$"),
        "typo.py": ("from aed_jax import config\n\ndef get_config():\n    c = config.base_config()\n"
                    "    c.lr_typo = 1.0\n    return c\n",
                    r'typo\.py, line 5: AttributeError: Key "lr_typo" does not exist'),
        "raises.py": ("from aed_jax import config\n\ndef get_config():\n    return config.base_config('gpt')\n",
                      r"raises\.py, line 4: model_type: 'gpt' is not one of aed, baseline$"),
        "exits.py": ("import sys\nsys.exit(0)\n", r"exits\.py, line 2: called sys\.exit\(0\) while loading$"),
    }
    for name, (text, match) in files.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(config_lib.ConfigError, match=match):
            config_lib.read(str(tmp_path / name))
    with pytest.raises(config_lib.ConfigError, match=r"nope\.py: no such file$"):
        config_lib.read(str(tmp_path / "nope.py"))


def parse(monkeypatch, capsys, args):
    """A command line with --config, parsed as every command parses it: (exit code, stdout, stderr)."""
    argv = ["prog", *args]
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads --config.<key> overrides from sys.argv
    flag_values = flags.FlagValues()
    cli.define_config_flag(flag_values)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(argv, flag_values)
        cli.get_config(flag_values)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.mark.parametrize("args,message", [
    ([], "error: --config is required"),
    (["--config=configs/nope.py", "--config.train_steps=4"], "error: configs/nope.py: no such file"),
    (["--config=configs/mse.py", "--config.lr_typo=3"], "error: unknown config key 'lr_typo'; --show_config lists"),
    (["--config=configs/mse.py", "--config.model_config.nonsense=3"], "error: unknown config key 'nonsense';"),
    (["--config=configs/mse.py", "--config.model_confg.n_head=3"],
     "error: unknown config key 'model_confg'; did you mean \"model_config\""),
    (["--config=configs/mse.py", "--config.model_config.embedding_loss_type=MSEE"],
     "error: configs/mse.py: model_config.embedding_loss_type: 'MSEE' is not one of"),
    (["--config=configs/mse.py", "--config.lr=nan"], "error: configs/mse.py: lr: must be a finite number > 0, got nan"),
    (["--config=configs/mse.py", "--config.beta2=inf"], "error: configs/mse.py: beta2: must be a finite number"),
    (["--config=configs/mse.py", "--config.model_config.n_head=x"], "error: flag --config.model_config.n_head=x"),
])
def test_config_errors_are_one_line(monkeypatch, capsys, args, message):
    code, out, err = parse(monkeypatch, capsys, args)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(message), err


def test_show_config_prints_every_key_with_overrides_and_exits_0(monkeypatch, capsys):
    code, out, err = parse(monkeypatch, capsys, ["--config=configs/tiny.py", "--config.lr=0.125", "--show_config"])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "configs/tiny.py, overrides applied:"
    assert len(lines) == 2 + len(list(config_lib.leaves(config_lib.load(os.path.join(ROOT, "configs", "tiny.py")))))
    assert any(line.split()[:2] == ["lr", "0.125"] for line in lines)


def parsed(monkeypatch, capsys, args):
    """A command line with --config that parses: (the config `cli.get_config` returns, stderr)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["prog", *args])
    flag_values = flags.FlagValues()
    cli.define_config_flag(flag_values)
    cli.parse_flags(["prog", *args], flag_values)
    c = cli.get_config(flag_values)
    return c, capsys.readouterr().err


def test_a_run_lengthened_past_its_decay_says_so_in_one_line(monkeypatch, capsys):
    """tiny decays to step 1,200: 2,400 steps say in one line that the last 1,200 train at min_lr, and the
    schedule stays as written; a given lr_decay_iters, a run within the decay or no decay says nothing."""
    c, err = parsed(monkeypatch, capsys, ["--config=configs/tiny.py", "--config.train_steps=2400"])
    assert err == ("warning: --config.train_steps=2400 trains past configs/tiny.py's lr_decay_iters=1200: its last "
                   "1,200 steps at min_lr=0.0003; for a new run whose decay spans it, pass "
                   "--config.lr_decay_iters=2400 too\n")
    assert (c.train_steps, c.warmup_iters, c.lr_decay_iters) == (2400, 30, 1200)
    for quiet in (["--config.train_steps=2400", "--config.lr_decay_iters=2400"], ["--config.train_steps=1000"],
                  ["--config.train_steps=2400", "--config.decay_lr=False"], ["--config.lr_decay_iters=600"]):
        assert parsed(monkeypatch, capsys, ["--config=configs/tiny.py", *quiet])[1] == "", quiet


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py")))
def test_every_config_runs_as_written(monkeypatch, capsys, name):
    """The schedule's line changes no value: each config run as written is its file's, silently, and with
    train_steps raised, its file's in every other key."""
    path = os.path.join("configs", name)
    written = config_lib.read(os.path.join(ROOT, path)).to_dict()
    c, err = parsed(monkeypatch, capsys, [f"--config={path}"])
    assert c.to_dict() == written and err == ""
    longer = parsed(monkeypatch, capsys, [f"--config={path}", f"--config.train_steps={10 * written['train_steps']}"])[0]
    assert longer.to_dict() == {**written, "train_steps": 10 * written["train_steps"]}


def test_commands_report_config_errors_in_one_line():
    """End to end, as a user runs them: no --config (main once raised UnparsedFlagError), a missing
    file with an override (once an OSError traceback)."""
    for command, args, message in [
        ("main", [], "error: --config is required"),
        ("summary", ["--config=configs/tiny.py", "extra"], "error: unexpected arguments: extra"),
        ("summary", ["--config=configs/nope.py", "--config.train_steps=4"], "error: configs/nope.py: no such file"),
    ]:
        result = subprocess.run([sys.executable, "-m", f"aed_jax.{command}", *args], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr


def test_summary_ends_with_the_count_line():
    text = summary.summarize(mse_config())
    assert text.splitlines()[-1] == "params: 15,763,500"
    assert "positional_embedding" in text and "(excluded)" in text


_LOADED_JAX = "import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_module('aed_jax.main', run_name='__main__', " \
              "alter_sys=True)\nexcept SystemExit as e:\n    print(e.code, 'jax' in sys.modules)"


@pytest.mark.parametrize("override,message", [
    ("--config.warmup_iters=-5", "error: configs/tiny.py: warmup_iters: must be an integer >= 0, got -5"),
    ("--config.dataset=task:copy", "error: configs/tiny.py: task.copy_length: two copies of 16 tokens need 32, "
                                   "more than context_size=16"),
    ("--config.dataset=task:sort", "error: configs/tiny.py: model_config.alphabet_size: sort needs at least 4 ids "
                                   "(separator, pad and two numbers: with one number every list is already sorted), "
                                   "got 3"),
    ("--config.dataset=data/wiki_vital", "error: configs/tiny.py: dataset: 'data/wiki_vital' is a path, and dataset "
                                         "is a name: for the token files in data/wiki_vital, pass "
                                         "--config.dataset=wiki_vital --config.data_dir=data/wiki_vital"),
])
def test_schedule_task_and_dataset_settings_are_one_line_before_jax_loads(override, message):
    """The trainer's command line: one line naming the key, jax never imported (the task settings used to be
    checked in the trainer, after jax loaded and an INFO line)."""
    extra = ["--config.model_config.context_size=16"] * ("task:copy" in override) + \
        ["--config.model_config.alphabet_size=3"] * ("task:sort" in override)
    result = subprocess.run([sys.executable, "-c", _LOADED_JAX, "aed_jax.main", "--config=configs/tiny.py", override,
                             *extra, "--workdir=/nonexistent/never"], cwd=ROOT, capture_output=True, text=True)
    assert result.stderr == message + "\n"
    assert result.stdout.split() == ["1", "False"]



@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".py")))
def test_a_runs_config_json_is_its_config_again(name, tmp_path):
    """`--config=<workdir>/config.json` re-runs a run: the JSON rundir writes reads back as the same config,
    every key and type (tuples included), and its default workdir is the run's own folder."""
    import json
    from aed_jax import rundir
    c = config_lib.load(os.path.join(ROOT, "configs", name))
    path = tmp_path / "run" / rundir.CONFIG
    path.parent.mkdir()
    path.write_text(json.dumps(c.to_dict(), indent=2, sort_keys=True))  # as rundir.accept writes it
    again = config_lib.load(str(path))
    assert again.to_dict() == c.to_dict() and dict(config_lib.leaves(again)) == dict(config_lib.leaves(c))
    assert rundir.default_workdir(again, str(path)) == str(tmp_path / "run")


def test_a_config_json_that_is_not_a_runs_is_one_line(tmp_path):
    import json
    c = config_lib.load(os.path.join(ROOT, "configs", "tiny.py")).to_dict()
    for content, message in (("{", "not a readable JSON file"), ("[1]", "not a run's config.json"),
                             (json.dumps({**c, "lr_typo": 1.0}), "unknown config key lr_typo"),
                             (json.dumps({**c, "train_steps": "many"}), "train_steps: ")):
        path = tmp_path / "config.json"
        path.write_text(content)
        with pytest.raises(config_lib.ConfigError, match=re.escape(f"{path}: {message}")):
            config_lib.read(str(path))
    old = {k: v for k, v in c.items() if k != "est_steps"}  # a key added since the run was recorded
    path.write_text(json.dumps(old))
    assert config_lib.read(str(path)).est_steps == config_lib.base_config().est_steps


def test_every_config_is_its_pinned_keys_on_base_config():
    """Each configs/*.py is base_config(model_type) with exactly the keys tests/data/configs.json pins for it,
    values and types (8.0 is not 8): a recipe of aed_jax/recipes.py, or a file's call of one, that changes
    any config's dict fails here, naming the config and the key. A new config adds its entry; a new key at
    its default, none."""
    import json
    with open(os.path.join(ROOT, "tests", "data", "configs.json"), encoding="utf-8") as f:
        pinned = json.load(f)
    names = sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, "configs")) if n.endswith(".py"))
    assert names == sorted(pinned)
    for name in names:
        c = config_lib.load(os.path.join(ROOT, "configs", f"{name}.py"))
        base = dict(config_lib.leaves(config_lib.base_config(c.model_type)))
        changed = {key: value for key, value in config_lib.leaves(c)
                   if key == "model_type" or value != base[key] or type(value) is not type(base[key])}
        for key in sorted(set(changed) | set(pinned[name])):
            assert json.dumps(changed.get(key, base.get(key))) == json.dumps(pinned[name].get(key, base.get(key))), \
                f"{name}: {key}"
