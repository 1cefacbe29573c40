"""The GPT-2 BPE tokenizer (50,257 tokens, "<|endoftext|>" = 50256), built with no network.

tiktoken's own `get_encoding("gpt2")` downloads its ranks on first use. Here the ranks ship with
the package (assets/gpt2.tiktoken, see assets/NOTICE) and are checked against their published
sha256 before use, so a damaged install fails loudly instead of tokenizing differently.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import os

import numpy as np
import tiktoken

from aed_jax import errors

EOT_ID = 50256
VOCAB_SIZE = 50257
RANKS_PATH = os.path.join(os.path.dirname(__file__), "assets", "gpt2.tiktoken")
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# GPT-2's pre-tokenizer split, exactly as tiktoken's r50k_base / gpt2 encodings define it.
_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


class TokenizerError(errors.UserError):
    """The packaged ranks file is missing or damaged: the message is one line naming it."""


@functools.cache
def get_encoding() -> tiktoken.Encoding:
    """The GPT-2 encoding from the packaged ranks; cached, so the file is read and hashed once."""
    try:
        with open(RANKS_PATH, "rb") as f:
            contents = f.read()
    except OSError as e:
        raise TokenizerError(f"{RANKS_PATH}: cannot read the GPT-2 ranks ({e.strerror}); reinstall aed_jax") from None
    digest = hashlib.sha256(contents).hexdigest()
    if digest != RANKS_SHA256:
        raise TokenizerError(f"{RANKS_PATH}: sha256 is {digest}, expected {RANKS_SHA256}; reinstall aed_jax")
    lines = (line.split() for line in contents.splitlines() if line)
    ranks = {base64.b64decode(token): int(rank) for token, rank in lines}
    return tiktoken.Encoding(
        "gpt2", pat_str=_PAT_STR, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT_ID},
        explicit_n_vocab=VOCAB_SIZE)


def encode_uint16(text: str) -> np.ndarray:
    """The ids of `text`, special tokens read as plain text, as uint16 (the token files' dtype).
    A top-level function of this light module, so worker processes can run it cheaply."""
    return np.asarray(get_encoding().encode_ordinary(text), dtype=np.uint16)
