"""The GPT-2 tokenizer: built from the packaged ranks, offline, checked by sha256."""
import hashlib
import pathlib
import socket

import pytest

from aed_jax import tokenizer


@pytest.fixture
def fresh_encoding():
    """Clears get_encoding's cache around a test, so the test sees the ranks file being loaded."""
    tokenizer.get_encoding.cache_clear()
    yield
    tokenizer.get_encoding.cache_clear()


def test_gpt2_ids():
    enc = tokenizer.get_encoding()
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.n_vocab == tokenizer.VOCAB_SIZE == 50257
    assert enc.eot_token == tokenizer.EOT_ID == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [tokenizer.EOT_ID]
    assert enc.encode_ordinary("a\n\nb") == [64, 198, 198, 65]  # GPT-2's split keeps "\n\n" before a word apart


def test_round_trip():
    text = "Ünïcödé, emoji 🙂, tabs\tand  spaces,\r\nnumbers 12345 and <|endoftext|> as plain text."
    enc = tokenizer.get_encoding()
    assert enc.decode(enc.encode_ordinary(text)) == text
    assert tokenizer.EOT_ID not in enc.encode_ordinary(text)


def test_builds_without_network(fresh_encoding, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the tokenizer tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    assert tokenizer.get_encoding().encode("Hello world") == [15496, 995]


def test_packaged_ranks_match_published_sha256():
    contents = pathlib.Path(tokenizer.RANKS_PATH).read_bytes()
    assert hashlib.sha256(contents).hexdigest() == tokenizer.RANKS_SHA256


def test_damaged_ranks_are_refused(fresh_encoding, monkeypatch, tmp_path):
    contents = bytearray(pathlib.Path(tokenizer.RANKS_PATH).read_bytes())
    contents[100] ^= 1
    damaged = tmp_path / "gpt2.tiktoken"
    damaged.write_bytes(bytes(contents))
    monkeypatch.setattr(tokenizer, "RANKS_PATH", str(damaged))
    with pytest.raises(tokenizer.TokenizerError, match=f"{damaged}: sha256 is [0-9a-f]{{64}}, expected "):
        tokenizer.get_encoding()


def test_missing_ranks_are_refused(fresh_encoding, monkeypatch, tmp_path):
    monkeypatch.setattr(tokenizer, "RANKS_PATH", str(tmp_path / "absent.tiktoken"))
    with pytest.raises(tokenizer.TokenizerError, match="absent.tiktoken: cannot read"):
        tokenizer.get_encoding()
