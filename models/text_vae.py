r"""A variational autoencoder for sentences (Bowman et al. 2016) and its baseline language model.

Sentences are rows of token ids from :mod:`pyro_vi.data.corpus` (words, ``<eos>``, ``<pad>``).
:class:`LanguageModel` is an RNN language model,
:math:`p(w) = \prod_{t=1}^{L+1} p(w_t \mid w_{<t})` with :math:`w_0 = \langle bos\rangle` and
:math:`w_{L+1} = \langle eos\rangle`. :class:`TextVAE` conditions the same decoder on a code:

.. math:: z \sim \mathcal N(0, I), \quad
          w_t \mid w_{<t}, z \sim \mathrm{Categorical}(\mathrm{softmax}(W h_t + b)), \quad
          h_t = \mathrm{RNN}([e(w_{t-1}); z], h_{t-1}), \quad h_0 = \tanh(A z + a),

and its guide :math:`q(z \mid w) = \mathcal N(\mu(w), \mathrm{diag}\,\exp \ell(w))` reads the
sentence with an encoder RNN (its state at ``<eos>``) and predicts the log-variance
:math:`\ell = \log \sigma^2` (seed 001). The words are one Categorical site per sentence, masked at
the padding, so the padding never enters the likelihood; local latents live in the ``"data"``
plate. Both tricks of Bowman et al. are options, off by default: KL annealing is
``pyro_vi.fit(..., anneal_epochs=E)``, and ``word_dropout=p`` replaces each word of the decoder's
input by ``<unk>`` with probability p while training (grad enabled, module in train mode); the
encoder always reads the sentence itself::

    data = load("wordnet")
    vae = TextVAE.from_data(data, z_dim=32, hidden=256, word_dropout=0.3)
    fit(vae.model, vae.guide, data, epochs=10, anneal_epochs=5, lr=2e-3)
    print(data.info["vocab"].decode(vae.sample(5)), sentence_metrics(vae, data.test.x))
"""

from __future__ import annotations

import math
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vi.data import Dataset, data_plate
from pyro_vi.data.corpus import BOS, EOS, PAD, UNK, sentence_mask
from pyro_vi.evaluate.bounds import elbo, log_marginal
from pyro_vi.protocol import Item, Model, PositiveInt, Text, register

__all__ = ["LanguageModel", "TextVAE", "WordCategorical", "sentence_metrics"]

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class WordCategorical(dist.Categorical):
    """``Categorical(softmax(out(states)))`` at every position, its logits made on demand.

    ``log_prob`` is 0 where ``where`` is false (padding; the site's mask drops it anyway). Up to
    a block of tokens times the vocabulary (2**24 logits) it scores every position at once, with
    shapes that do not depend on the words (so training steps can be captured); beyond, it
    applies the output layer only at the real words, in blocks, so its memory stays bounded for
    any number of sentences and particles.
    """

    arg_constraints = {}  # the logits are checked where they are made

    def __init__(
        self, states: torch.Tensor, out: nn.Linear, where: torch.Tensor, validate_args=None
    ):
        self.states, self.out, self.where = states, out, where
        self._num_events = out.out_features
        torch.distributions.Distribution.__init__(
            self, states.shape[:-1], validate_args=validate_args
        )

    @property
    def logits(self) -> torch.Tensor:
        return F.log_softmax(self.out(self.states), -1)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.exp()

    @property
    def _param(self) -> torch.Tensor:
        return self.logits

    def expand(self, batch_shape, _instance=None) -> WordCategorical:
        batch_shape = torch.Size(batch_shape)
        states = self.states.expand(batch_shape + self.states.shape[-1:])
        return WordCategorical(states, self.out, self.where.expand(batch_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        shape = torch.broadcast_shapes(value.shape, self.batch_shape)
        where = self.where.expand(shape)
        block = max(1, 2**24 // self._num_events)
        if shape.numel() <= block:  # all positions at once: shapes independent of the words
            states = self.states.expand(shape + self.states.shape[-1:])
            lp = -F.cross_entropy(self.out(states).movedim(-1, 1), value.long().expand(shape),
                                  reduction="none")  # fmt: skip
            return lp.where(where, 0.0)
        h = self.states.expand(shape + self.states.shape[-1:])[where]
        v = value.long().expand(shape)[where]
        lp = [-F.cross_entropy(self.out(h[i : i + block]), v[i : i + block], reduction="none")
              for i in range(0, len(v), block)]  # fmt: skip
        return h.new_zeros(shape).index_put((where,), torch.cat(lp) if lp else h.new_zeros(0))


@register("text-lm", corpus="wordnet")
class LanguageModel(nn.Module, Model):
    """RNN language model over token-id rows: the baseline of :class:`TextVAE`, and its decoder.

    ``embed_dim``-wide word embeddings, one ``cell`` layer ("lstm" or "gru") of width ``hidden``,
    a softmax over ``vocab_size`` words; sentences up to ``max_len`` words (for sampling).
    """

    name = "text_lm"
    eval_block = (256, 32)  # rows per call and particles per chunk when evaluating splits
    z_dim = 0

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 128,
        hidden: int = 256,
        cell: str = "lstm",
        max_len: int = 20,
        word_dropout: float = 0.0,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}: choose one of {', '.join(CELLS)}")
        if not 0.0 <= word_dropout < 1.0:
            raise ValueError(f"word_dropout={word_dropout}: use a probability in [0, 1)")
        if vocab_size < 4:
            raise ValueError(f"vocab_size={vocab_size}: use at least 4 (<pad> <unk> <bos> <eos>)")
        self.config = dict(vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden, cell=cell,
                           max_len=max_len, word_dropout=word_dropout)  # fmt: skip
        self.vocab_size, self.hidden, self.cell = vocab_size, hidden, cell
        self.max_len, self.word_dropout = max_len, word_dropout
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.rnn = CELLS[cell](embed_dim + self.z_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    @classmethod
    def from_data(
        cls,
        data: Dataset,
        hidden: PositiveInt | tuple[PositiveInt, ...] = 256,
        embed_dim: PositiveInt = 128,
        cell: Literal["lstm", "gru"] = "lstm",
        word_dropout: float = 0.0,
        **latent: int,
    ) -> LanguageModel:
        """A model sized for ``data`` (a corpus :class:`~pyro_vi.data.Dataset`).

        :param hidden: hidden widths of the networks (one here: the RNN's)
        :param embed_dim: width of the word embeddings
        :param cell: the RNN cell
        :param word_dropout: decoder inputs become <unk> with this probability while training
        """
        if "vocab" not in data.info:
            raise ValueError(f"{data.name} is not a sentence corpus: use --corpus wordnet|PATH")
        if isinstance(hidden, list | tuple):
            if len(hidden) != 1:
                raise ValueError(f"hidden={list(hidden)}: the text models have one RNN layer, "
                                 "give one width")  # fmt: skip
            hidden = hidden[0]
        return cls(len(data.info["vocab"]), embed_dim, hidden, cell, data.info["max_len"],
                   word_dropout, **latent)  # fmt: skip

    def check(self, x: torch.Tensor) -> None:
        """One-line errors for data this model cannot take."""
        if x.dim() != 2 or x.dtype != torch.long:
            raise ValueError(f"sentences must be a 2-D long tensor of token ids, not {x.dtype}")
        if bool(((x < 0) | (x >= self.vocab_size)).any()):
            raise ValueError(
                f"token ids outside [0, {self.vocab_size}): build the model for this data"
            )
        if not bool((x == EOS).any(-1).all()):
            raise ValueError("a sentence without <eos>: encode sentences with pyro_vi.data.corpus")

    # --- the decoder --------------------------------------------------------------------------

    def _initial_state(self, z: torch.Tensor | None):
        return None

    def _decoder_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """<bos>, w_1, ..., w_L (teacher forcing); words become <unk> under word dropout."""
        inputs = torch.cat([torch.full_like(x[..., :1], BOS), x[..., :-1]], -1)
        if self.word_dropout > 0 and self.training and torch.is_grad_enabled():
            drop = torch.rand(x.shape, device=x.device) < self.word_dropout
            drop[..., 0] = False  # <bos> stays
            inputs = inputs.masked_fill(drop, UNK)
        return inputs

    def states(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder states h_1..h_T given the words before each position (and z): (..., B, T, H)."""
        emb = self.embed(self._decoder_inputs(x))  # (B, T, E)
        lead = () if z is None else z.shape[:-2]  # particle dimensions
        emb = emb.expand(lead + emb.shape).reshape(-1, *emb.shape[-2:])
        if z is not None:
            zf = z.expand(lead + x.shape[:1] + z.shape[-1:]).reshape(-1, z.shape[-1])
            emb = torch.cat([emb, zf[:, None].expand(-1, emb.shape[1], -1)], -1)
            out, _ = self.rnn(emb, self._initial_state(zf))
        else:
            out, _ = self.rnn(emb)
        return out.reshape(lead + x.shape + (self.hidden,))

    def _observe(self, x: torch.Tensor, z: torch.Tensor | None) -> None:
        mask = sentence_mask(x)  # batches come trimmed (Split.row_end): no trim by values here
        words = WordCategorical(self.states(x, z), self.out, mask)
        pyro.sample("w", words.mask(mask).to_event(1), obs=x)

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module(self.name, self)
        with data_plate(x, idx, size):
            self._observe(x, None)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        """No latent variables: the empty guide (log_marginal is then the exact log p(w))."""

    @torch.no_grad()
    def generate(self, n: int, z: torch.Tensor | None = None, greedy: bool = False) -> torch.Tensor:
        """``n`` sentences word by word (sampled, or the most probable word when ``greedy``):
        rows of ids ending in <eos> and <pad>, ``max_len`` + 1 columns."""
        ref = self.out.weight
        state = self._initial_state(z)
        word = torch.full((n, 1), BOS, dtype=torch.long, device=ref.device)
        rows, done = [], torch.zeros(n, dtype=torch.bool, device=ref.device)
        for _ in range(self.max_len + 1):
            emb = self.embed(word)
            if z is not None:
                emb = torch.cat([emb, z[:, None]], -1)
            h, state = self.rnn(emb, state)
            logits = self.out(h[:, -1])
            w = logits.argmax(-1) if greedy else dist.Categorical(logits=logits).sample()
            w = w.masked_fill(done, PAD)
            rows.append(w)
            done = done | (w == EOS)
            if bool(done.all()):
                break
            word = w[:, None]
        out = torch.stack(rows, 1)
        return F.pad(out, (0, self.max_len + 1 - out.shape[1]), value=PAD)

    def sample(self, n: int, greedy: bool = False) -> torch.Tensor:
        """``n`` sentences from the model (token ids)."""
        return self.generate(n, greedy=greedy)

    def sample_text(self, n: int, data) -> list[str]:
        """``n`` sampled sentences as strings."""
        return data.info["vocab"].decode(self.sample(n))

    def samples(self, n: int, data: Dataset) -> Item:
        """``n`` sampled sentences (``pyro-vi sample`` prints them)."""
        return Text(self.sample_text(n, data))

    def report(self, data: Dataset, seed: int = 0) -> dict[str, Item]:
        """``sentences``: :meth:`showcase` (samples; for the VAE also reconstructions and a
        homotopy)."""
        return {"sentences": Text(self.showcase(data))}

    def showcase(self, data, n: int = 10) -> list[str]:
        """Lines of text that show the model: here ``n`` samples."""
        return ["samples:", *data.info["vocab"].decode(self.sample(n))]


@register("text-vae", corpus="wordnet")
class TextVAE(LanguageModel):
    """The sentence VAE: :class:`LanguageModel`'s decoder fed z (initial state and every step)
    and an RNN encoder for q(z | w); see the module docstring."""

    name = "text_vae"

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 128,
        hidden: int = 256,
        cell: str = "lstm",
        max_len: int = 20,
        word_dropout: float = 0.0,
        z_dim: int = 32,
    ):
        self.z_dim = z_dim
        super().__init__(vocab_size, embed_dim, hidden, cell, max_len, word_dropout)
        self.config["z_dim"] = z_dim
        self.enc_embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.encoder = CELLS[cell](embed_dim, hidden, batch_first=True)
        self.enc_out = nn.Linear(hidden, 2 * z_dim)  # loc and log sigma^2
        self.init = nn.Linear(z_dim, hidden * (2 if cell == "lstm" else 1))

    @classmethod
    def from_data(cls, data: Dataset, z_dim: PositiveInt = 32, **options) -> TextVAE:
        """A sentence VAE sized for ``data``; ``options`` as :meth:`LanguageModel.from_data`.

        :param z_dim: latent dimension
        """
        return super().from_data(data, z_dim=z_dim, **options)

    def _initial_state(self, z):
        if z is None:
            return None
        h0 = torch.tanh(self.init(z))[None]
        return tuple(h0.chunk(2, -1)) if self.cell == "lstm" else h0

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loc and log-variance of q(z | w) for each row: the encoder's state at <eos>."""
        out, _ = self.encoder(self.enc_embed(x))
        last = sentence_mask(x).sum(-1) - 1
        h = out[torch.arange(x.shape[0], device=x.device), last]
        loc, log_var = self.enc_out(h).chunk(2, -1)
        return loc, log_var

    def model(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module(self.name, self)
        with data_plate(x, idx, size):
            loc = self.out.weight.new_zeros(x.shape[0], self.z_dim)
            z = pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
            self._observe(x, z)

    def guide(self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None):
        pyro.module(self.name, self)
        with data_plate(x, idx, size):
            loc, log_var = self.posterior(x)
            pyro.sample("z", dist.Normal(loc, (0.5 * log_var).exp()).to_event(1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of z for each sentence."""
        return self.posterior(x)[0]

    @torch.no_grad()
    def kl(self, x: torch.Tensor) -> torch.Tensor:
        """KL(q(z | w) || p(z)) per sentence, in closed form."""
        loc, log_var = self.posterior(x)
        return 0.5 * (loc**2 + log_var.exp() - 1.0 - log_var).sum(-1)

    @torch.no_grad()
    def active_units(self, x: torch.Tensor, threshold: float = 0.01) -> int:
        """Burda et al. (2016): the coordinates u with Cov_w(E_q[z_u | w]) > ``threshold``."""
        return int((self.encode(x).var(0) > threshold).sum())

    def sample(self, n: int, greedy: bool = False) -> torch.Tensor:
        """``n`` sentences decoded from z ~ N(0, I)."""
        ref = self.out.weight
        return self.generate(n, torch.randn(n, self.z_dim, device=ref.device), greedy)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Greedy decoding of each sentence's posterior mean."""
        return self.generate(x.shape[0], self.encode(x), greedy=True)

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 5) -> torch.Tensor:
        """Homotopy: greedy decodings of ``steps`` codes on the line between the posterior means
        of x_a and x_b, shape (steps, B, max_len + 1)."""
        za, zb = self.encode(x_a), self.encode(x_b)
        t = torch.linspace(0, 1, steps, device=za.device)[:, None, None]
        z = (za + t * (zb - za)).reshape(-1, self.z_dim)
        return self.generate(z.shape[0], z, greedy=True).reshape(steps, x_a.shape[0], -1)

    def showcase(self, data, n: int = 10) -> list[str]:
        """Samples from the prior, greedy reconstructions and one homotopy of test sentences."""
        vocab, x = data.info["vocab"], data.test.x
        lines = ["samples from the prior:", *vocab.decode(self.sample(n))]
        lines += ["", "reconstructions (input -> greedy decoding of E[z | w]):"]
        lines += [f"{a}  ->  {b}" for a, b in zip(vocab.decode(x[:n]), vocab.decode(
            self.reconstruct(x[:n])), strict=True)]  # fmt: skip
        lines += ["", "homotopy:", *vocab.decode(self.interpolate(x[:1], x[1:2], 7)[:, 0])]
        return lines


@torch.no_grad()
def sentence_metrics(lm: LanguageModel, x: torch.Tensor, num_samples: int = 100,
                     rows: int | None = None) -> dict:  # fmt: skip
    """Test figures of a :class:`LanguageModel` or :class:`TextVAE` on sentences ``x``:
    ``nll`` = −log p(w) per sentence (the IWAE-``num_samples`` bound through
    :func:`pyro_vi.log_marginal` for the VAE, exact for the LM), ``neg_elbo``, the perplexity
    exp(Σ nll / Σ words) counting <eos>, the closed-form ``kl`` per sentence and the number of
    ``active_units``. Sentences go in blocks of similar length (``rows`` each)."""
    rows, chunk = rows or lm.eval_block[0], lm.eval_block[1]
    lengths = sentence_mask(x).sum(-1)
    order = lengths.argsort()
    nll, neg_elbo, kl = [], [], []
    k = num_samples if lm.z_dim else 1
    for i in range(0, len(x), rows):
        xb = x[order[i : i + rows]]
        nll.append(-log_marginal(lm.model, lm.guide, xb, num_samples=k, chunk_size=chunk))
        neg_elbo.append(-elbo(lm.model, lm.guide, xb))
        kl.append(lm.kl(xb) if lm.z_dim else xb.new_zeros(len(xb), dtype=torch.float))
    nll, neg_elbo, kl = torch.cat(nll), torch.cat(neg_elbo), torch.cat(kl)
    words = int(lengths.sum())
    return {
        "nll": float(nll.mean()),
        "neg_elbo": float(neg_elbo.mean()),
        "ppl": math.exp(float(nll.sum()) / words),
        "kl": float(kl.mean()),
        "active_units": lm.active_units(x) if lm.z_dim else 0,
        "sentences": len(x),
        "words": words,
    }
