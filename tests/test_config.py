"""Config validation (SPEC.md item 8) and the one-line errors of the command lines."""
import os
import subprocess
import sys

import pytest

from aed_jax import config as config_lib
from aed_jax import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mse_config():
    return config_lib.load(os.path.join(ROOT, "configs", "mse_pos_sub.py"))


@pytest.mark.parametrize("key,value,match", [
    ("n_head", 7, r"model_config\.n_head: n_embed=150 is not divisible by n_head=7"),
    ("embedding_loss_type", "FOO", r"model_config\.embedding_loss_type: 'FOO' is not one of NONE, MSE"),
    ("sub_pos_embed_to_decoder", "YES", r"model_config\.sub_pos_embed_to_decoder: 'YES' is not one of"),
    ("order_type", "REVERSED", r"model_config\.order_type"),
    ("detach_type", "BOTH", r"model_config\.detach_type"),
    ("embedding_loss_coeff", 0.0, r"model_config\.embedding_loss_coeff: must be > 0"),
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


def test_micro_batch_size_must_divide_the_effective_batch():
    c = mse_config()
    c.micro_batch_size = 7
    with pytest.raises(config_lib.ConfigError, match="micro_batch_size"):
        config_lib.validate(c)


@pytest.mark.parametrize("args,message", [
    (["--config=configs/mse.py", "--config.model_config.n_hed=3"], "error: unknown config key: n_hed"),
    (["--config=configs/mse.py", "--config.model_config.embedding_loss_type=MSEE"],
     "error: configs/mse.py: model_config.embedding_loss_type: 'MSEE' is not one of"),
    (["--config=configs/nope.py"], "error: --config: no such file 'configs/nope.py'"),
    (["--config=configs/mse.py", "--config.model_config.n_head=x"], "error: flag --config.model_config.n_head=x"),
])
def test_cli_errors_are_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "aed_jax.summary", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_summary_ends_with_the_count_line():
    text = summary.summarize(mse_config())
    assert text.splitlines()[-1] == "params: 15,763,500"
    assert "positional_embedding" in text and "(excluded)" in text
