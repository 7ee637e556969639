"""Sentence corpora as padded token-id tensors: WordNet's example sentences or a text file.

``load("wordnet")`` (see :func:`pyro_vi.data.load`) reads the quoted example sentences of the
glosses in Debian's ``wordnet-base`` (``/usr/share/wordnet/data.{noun,verb,adj,adv}``; the text
after ``|``, e.g. ``| a tangible and visible entity; "it was full of rackets, balls and other
objects"``), about 48,000 short English sentences. The definitions themselves are left out: they
are noun phrases, not sentences. ``load(path, text=True)`` reads any UTF-8 file with one sentence
per line instead.

Every sentence is lowercased and split by :data:`TOKEN` into words and punctuation marks; exact
duplicates are dropped (so no sentence is in two splits) and so are sentences longer than
``max_len`` tokens (they are not truncated). A fixed-seed permutation gives the test split
(``test_fraction``), the validation split (``valid_fraction`` of the rest) and the training split.
The vocabulary is the ``vocab_size`` - 4 most frequent training words (ties alphabetical) after
the specials ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3; other words become
``<unk>``. A split's ``x`` is a long tensor (sentences, ``max_len`` + 1): the word ids, ``<eos>``,
then ``<pad>``; ``<bos>`` is left to the models (it starts their decoders)::

    ds = load("wordnet", vocab_size=10000, max_len=20)
    vocab = ds.info["vocab"]
    print(vocab.decode(ds.train.x[:2]))  # ['the team is a unit', ...]
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .machine import WORDNET_FILES, missing, wordnet_dir
from .split import DataError, Dataset, Split

__all__ = [
    "Vocabulary",
    "tokenize",
    "sentence_mask",
    "wordnet_sentences",
    "text_sentences",
    "load_corpus",
]

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = range(4)
TOKEN = re.compile(
    r"\w+(?:'\w+)*|[^\w\s]"
)  # words (with inner apostrophes) or one punctuation mark


def tokenize(sentence: str) -> list[str]:
    """Lowercase ``sentence`` and split it into words and punctuation marks."""
    return TOKEN.findall(sentence.lower())


class Vocabulary:
    """Words by id: the four specials first, then the kept words."""

    def __init__(self, words: Iterable[str]):
        self.words = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, sentences: Iterable[list[str]], size: int) -> Vocabulary:
        """The ``size`` - 4 most frequent words of ``sentences`` (ties alphabetical)."""
        counts = Counter(w for s in sentences for w in s)
        ranked = sorted(counts, key=lambda w: (-counts[w], w))
        return cls(ranked[: size - len(SPECIALS)])

    def encode(self, tokens: list[str]) -> list[int]:
        """Ids of ``tokens`` followed by ``<eos>``; unknown words become ``<unk>``."""
        return [self.index.get(w, UNK) for w in tokens] + [EOS]

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Sentences from rows of ids, each cut at its first ``<eos>``, without ``<pad>``."""
        out = []
        for row in ids.reshape(-1, ids.shape[-1]).tolist():
            row = row[: row.index(EOS)] if EOS in row else row
            out.append(" ".join(self.words[i] for i in row if i not in (PAD, BOS)))
        return out


def sentence_mask(x: torch.Tensor) -> torch.Tensor:
    """True at each row's words and first ``<eos>``; what follows is padding, whatever it holds."""
    eos = (x == EOS).long()
    return (eos.cumsum(-1) - eos) == 0


def wordnet_sentences(root: str | os.PathLike | None = None) -> list[str]:
    """The quoted example sentences of WordNet's glosses, in file order."""
    root = Path(root) if root is not None else wordnet_dir()
    paths = [root / f for f in WORDNET_FILES]
    if (why := missing("wordnet", root)) is not None:
        raise DataError(why)
    out = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or "|" not in line:  # licence header, no gloss
                    continue
                out += re.findall(r'"([^"]+)"', line.split("|", 1)[1])
    return out


def text_sentences(path: str | os.PathLike) -> list[str]:
    """The non-blank lines of a UTF-8 text file, one sentence each."""
    if not os.path.isfile(path):
        raise DataError(f"no corpus file at {path}: pass a text file with one sentence per line")
    with open(path, encoding="utf-8", errors="replace") as f:
        return [line.strip() for line in f if line.strip()]


def load_corpus(
    name: str,
    *,
    vocab_size: int = 10000,
    max_len: int = 20,
    seed: int = 0,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
) -> Dataset:
    """``"wordnet"`` (from ``root``, default the package's folder) or a text file, as a
    :class:`~pyro_vi.data.Dataset` of token ids; see the module docstring."""
    if vocab_size < len(SPECIALS):
        raise DataError(f"vocab_size={vocab_size}: use at least 4 (<pad> <unk> <bos> <eos>)")
    if max_len < 1:
        raise DataError(f"max_len={max_len}: use at least 1 token per sentence")
    raw = wordnet_sentences(root) if name == "wordnet" else text_sentences(name)
    if not raw:
        raise DataError(f"the corpus {name} is empty: give it one sentence per line")
    unique = list(dict.fromkeys(tuple(tokenize(s)) for s in raw))
    kept = [list(s) for s in unique if 0 < len(s) <= max_len]
    if len(kept) < 3:
        raise DataError(
            f"{len(kept)} sentence(s) of {name} left after dropping duplicates and sentences "
            f"longer than max_len={max_len}: need at least 3 (train/valid/test)"
        )
    perm = np.random.default_rng(seed).permutation(len(kept))
    ntest = max(1, round(test_fraction * len(kept)))
    nvalid = max(1, round(valid_fraction * (len(kept) - ntest)))
    parts = {"test": perm[:ntest], "valid": perm[ntest : ntest + nvalid]}
    parts["train"] = perm[ntest + nvalid :]
    train_tokens = [kept[i] for i in parts["train"]]
    vocab = Vocabulary.build(train_tokens, vocab_size)
    splits = {}
    for key, rows in parts.items():
        x = np.full((len(rows), max_len + 1), PAD, dtype=np.int64)
        for r, i in enumerate(rows):
            ids = vocab.encode(kept[i])
            x[r, : len(ids)] = ids
        splits[key] = Split(torch.from_numpy(x).to(device), row_end=EOS)
    xtr = splits["train"].x
    words = xtr[(xtr != PAD) & (xtr != EOS)]
    info = {
        "vocab": vocab,
        "max_len": max_len,
        "source": str(root or wordnet_dir()) if name == "wordnet" else str(name),
        "sentences_read": len(raw),
        "duplicates": len(raw) - len(unique),
        "too_long": sum(len(s) > max_len for s in unique),
        "train_unk_rate": float((words == UNK).float().mean()) if len(words) else 0.0,
    }
    return Dataset(name, splits["train"], splits["valid"], splits["test"], shape=(max_len + 1,),
                   likelihood="categorical", info=info)  # fmt: skip
