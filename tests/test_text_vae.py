"""Sentence corpora and the sentence VAE: masking, the IS-vs-ELBO relation, word dropout, the
corpus errors, a tiny training run and a tiny CLI run."""

import itertools
import json
import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from helpers import needs
from pyro import poutine

from pyro_vi import elbo, fit, log_marginal
from pyro_vi.cli import main
from pyro_vi.data import DataError, load
from pyro_vi.data.corpus import BOS, EOS, PAD, UNK, Vocabulary, sentence_mask, tokenize
from pyro_vi.evaluate.bounds import log_weights
from pyro_vi.models.text_vae import LanguageModel, TextVAE, WordCategorical, sentence_metrics

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "she", "they"]
VERBS = ["likes", "sees", "found", "wants"]
OBJECTS = ["the ball", "a red apple", "it", "the small house", "us"]


@pytest.fixture
def corpus_file(tmp_path):
    lines = [f"{s} {v} {o}." for s, v, o in itertools.product(SUBJECTS, VERBS, OBJECTS)]
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(lines) + "\n\n" + lines[0] + "\n")  # a blank line, a duplicate
    return path


@pytest.fixture
def data(corpus_file):
    return load(str(corpus_file), text=True, vocab_size=20, max_len=8, seed=0)


def tiny(cls, data, **kw):
    return cls.from_data(data, embed_dim=8, hidden=16, **kw)


def test_tokenize_and_vocabulary():
    assert tokenize("Don't stop, Mr. Smith!") == ["don't", "stop", ",", "mr", ".", "smith", "!"]
    v = Vocabulary.build([["b", "a", "b"], ["c", "a", "b"]], size=6)
    assert v.words == ["<pad>", "<unk>", "<bos>", "<eos>", "b", "a"]
    ids = v.encode(["a", "c"])
    assert ids == [5, UNK, EOS]
    assert v.decode(torch.tensor([ids + [PAD, PAD]])) == ["a <unk>"]


def test_corpus_splits(corpus_file, data):
    n = 6 * 4 * 5  # duplicates and blank lines dropped
    assert len(data.train) + len(data.valid) + len(data.test) == n
    assert (len(data.test), len(data.valid)) == (12, 11)
    assert data.shape == (9,) and data.train.x.dtype == torch.long
    assert len(data.info["vocab"]) == 20 and data.info["duplicates"] == 1
    x = torch.cat([data.train.x, data.valid.x, data.test.x])
    assert bool((x == EOS).any(-1).all()) and not bool((x == BOS).any())
    assert bool(((x == PAD) == ~sentence_mask(x)).all())  # padding exactly after <eos>
    same = load(str(corpus_file), text=True, vocab_size=20, max_len=8, seed=0)
    other = load(str(corpus_file), text=True, vocab_size=20, max_len=8, seed=1)
    assert torch.equal(same.test.x, data.test.x) and not torch.equal(other.test.x, data.test.x)
    batch = next(data.train.batches(16, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(batch.x, data.train.x[batch.idx])


def test_corpus_errors(tmp_path, corpus_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(DataError, match="empty"):
        load(str(empty), text=True)
    with pytest.raises(DataError, match="left after"):
        load(str(corpus_file), text=True, max_len=2)
    with pytest.raises(DataError, match="at least 4"):
        load(str(corpus_file), text=True, vocab_size=3)
    with pytest.raises(DataError, match="apt-get install wordnet-base"):
        load("wordnet", root=tmp_path)  # no WordNet files there: as if the package were absent
    with pytest.raises(DataError, match="no corpus file"):
        load(str(tmp_path / "missing.txt"), text=True)


@needs("wordnet")
def test_wordnet_when_installed():
    data = load("wordnet", vocab_size=50, max_len=5)
    assert len(data.train) > 10000 and len(data.info["vocab"]) == 50


def test_word_categorical_is_the_categorical(data):
    lm = tiny(LanguageModel, data)
    x = data.train.x[:6]
    mask = sentence_mask(x)
    h = lm.states(x)
    ours = WordCategorical(h, lm.out, mask).log_prob(x)
    ref = torch.distributions.Categorical(logits=lm.out(h)).log_prob(x)
    assert torch.allclose(ours[mask], ref[mask], atol=1e-5) and bool((ours[~mask] == 0).all())


def test_padding_never_enters_the_likelihood(data):
    vae = tiny(TextVAE, data, z_dim=3)
    x = data.train.x[:8]
    noisy = x.clone()
    pad = ~sentence_mask(x)
    noisy[pad] = torch.randint(4, 20, (int(pad.sum()),))  # any word after <eos> is padding
    z = torch.randn(8, 3)
    lps = []
    for rows in (x, noisy):
        cond = poutine.condition(vae.model, {"z": z})
        tr = poutine.trace(cond).get_trace(rows)
        tr.compute_log_prob()
        lps.append(tr.nodes["w"]["log_prob"])
        assert torch.allclose(vae.posterior(rows)[0], vae.posterior(x)[0])
    assert torch.allclose(lps[0], lps[1])
    # the LM's log p(w) is the chain rule over the words and <eos>, nothing else
    lm = tiny(LanguageModel, data)
    logp = F.log_softmax(lm.out(lm.states(x)), -1).gather(-1, x[..., None])[..., 0]
    expected = (logp * sentence_mask(x)).sum(-1)
    assert torch.allclose(log_marginal(lm.model, lm.guide, noisy, num_samples=1), expected)


def test_importance_sampled_log_marginal_is_above_the_elbo(data):
    vae = tiny(TextVAE, data, z_dim=4)
    fit(vae.model, vae.guide, data, epochs=2, batch_size=32, lr=1e-2, device="cpu", seed=0)
    x = data.test.x
    pyro.set_rng_seed(1)
    k = 200
    lw = log_marginal(vae.model, vae.guide, x, num_samples=k)
    with torch.no_grad():
        bound = elbo(vae.model, vae.guide, x, num_particles=k)  # other draws: Monte Carlo error
        spread = log_weights(vae.model, vae.guide, x, num_particles=k, nesting=1)[0].std(0)
    assert bool((lw >= bound - 4 * spread / k**0.5).all())
    lm = tiny(LanguageModel, data)  # no latents: the bound is exact, K = 1 suffices
    one = log_marginal(lm.model, lm.guide, x, num_samples=1)
    assert torch.allclose(one, log_marginal(lm.model, lm.guide, x, num_samples=7), atol=1e-5)


def test_word_dropout_leaves_the_encoder_input_untouched(data):
    vae = tiny(TextVAE, data, z_dim=3, word_dropout=0.9)
    seen = {}
    vae.enc_embed.register_forward_hook(lambda m, inp, out: seen.__setitem__("enc", inp[0]))
    vae.embed.register_forward_hook(lambda m, inp, out: seen.__setitem__("dec", inp[0]))
    x = data.train.x[:32]
    mask = sentence_mask(x)
    pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)  # training: grad on
    assert torch.equal(seen["enc"], x)
    words = torch.cat([mask[:, :1] & False, mask[:, :-1]], -1)[:, : seen["dec"].shape[1]]
    assert bool((seen["dec"][:, 0] == BOS).all())
    assert float((seen["dec"][words] == UNK).float().mean()) > 0.7
    with torch.no_grad():  # evaluation: no dropout
        vae.model(x)
    expected = torch.cat([torch.full_like(x[:, :1], BOS), x[:, :-1]], -1)[:, : seen["dec"].shape[1]]
    assert torch.equal(seen["dec"], expected)
    with pytest.raises(ValueError, match="word_dropout"):
        tiny(TextVAE, data, word_dropout=1.0)


def test_tiny_training_run_and_text_methods(data):
    vae = tiny(TextVAE, data, z_dim=4, word_dropout=0.2)
    result = fit(vae.model, vae.guide, data, epochs=4, batch_size=16, lr=1e-2, anneal_epochs=2,
                 device="cpu", seed=0)  # fmt: skip
    h = result.history
    assert h[0]["beta"] < 1.0 and h[-1]["beta"] == 1.0  # KL annealing by fit
    assert h[-1]["valid_elbo"] > h[0]["valid_elbo"]
    x = data.test.x
    m = sentence_metrics(vae, x, num_samples=20)
    # IWAE-20 ≥ ELBO in expectation; neg_elbo is a one-particle estimate: allow its MC error
    draws = torch.stack([-elbo(vae.model, vae.guide, x) for _ in range(10)])
    se = float((draws.var(0).mean() / len(x)).sqrt())
    assert m["nll"] <= m["neg_elbo"] + 4 * se + 1e-4, (m, se)
    # exact identities against the model's own sites: the KL of the guide's q(z | w) to the
    # model's prior in closed form (torch's Normal-Normal KL), the active units from the guide's
    # mean (Burda et al.: variance over sentences above 0.01), the perplexity from nll and words
    with torch.no_grad():
        q = poutine.trace(vae.guide).get_trace(x).nodes["z"]["fn"]
        p = poutine.trace(vae.model).get_trace(x).nodes["z"]["fn"]
    assert m["kl"] == pytest.approx(float(torch.distributions.kl_divergence(q, p).mean()), abs=1e-5)
    assert m["active_units"] == int((q.mean.var(0) > 0.01).sum())
    assert m["words"] == int(sentence_mask(x).sum()) and m["sentences"] == len(x)
    assert m["ppl"] == pytest.approx(math.exp(m["nll"] * len(x) / m["words"]), rel=1e-5)
    assert torch.allclose(vae.kl(x).mean(), torch.tensor(m["kl"]), atol=1e-5)
    assert vae.sample(5).shape == (5, 9) and vae.reconstruct(x[:3]).shape == (3, 9)
    assert vae.interpolate(x[:2], x[2:4], steps=3).shape == (3, 2, 9)
    text = vae.showcase(data, n=3)
    # 3 samples, 3 reconstructions "input  ->  greedy decoding", a 7-step homotopy from x[0]
    # to x[1] whose first line decodes x[0]'s posterior mean, as its reconstruction does
    assert len(text) == 18 and text[10] == "homotopy:"
    pairs = [line.split("  ->  ") for line in text[6:9]]
    assert [a for a, _ in pairs] == data.info["vocab"].decode(x[:3])
    assert text[11] == pairs[0][1]
    with pytest.raises(ValueError, match="token ids"):
        vae.check(torch.full((2, 9), 50))
    with pytest.raises(ValueError, match="not a sentence corpus"):
        TextVAE.from_data(load("gaussian2d", n=100))


def test_tiny_cli_run(corpus_file, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["fit", "text-vae", "--corpus", str(corpus_file), "--vocab-size", "20", "--max-len",
            "8", "--epochs", "2", "--z-dim", "3", "--hidden", "16", "--embed-dim", "8",
            "--word-dropout", "0.25", "--anneal-epochs", "1", "--iwae-k", "10",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert metrics["test_log_px"] >= metrics["test_elbo"] - 1.0
    assert "homotopy:" in (out / "sentences.txt").read_text()
    assert main(["sample", str(out), "-n", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and json.loads(lines[-1])["samples"] == 4
    bad = ["fit", "text-vae", "--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "b")]
    code = main(bad)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no corpus file" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_diagnostics_on_cuda_token_ids(data):
    """Token ids are integer tensors: the diagnostics take the device from them too."""
    from pyro_vi.diagnostics.importance import psis_khat

    for cls, kw in ((LanguageModel, {}), (TextVAE, {"z_dim": 4})):
        m = tiny(cls, data, **kw).cuda()
        x = data.test.x.cuda()
        res = psis_khat(m.model, m.guide, x, num_samples=30, pointwise=kw != {})
        assert res.log_weights.is_cuda and bool(torch.isfinite(res.log_weights).all())
