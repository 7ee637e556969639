"""The sentence VAE against an LSTM language model of the same size on WordNet's example sentences.

Three models, trained by ``pyro_vi.fit`` (Trace_ELBO, Adam, batch 128) for ``--epochs`` epochs each
with the parameters of the best validation-ELBO epoch kept: the LSTM language model (the
baseline); the VAE without tricks; the VAE with KL annealing (β from 0.01 to 1 over
``--anneal-epochs`` epochs) and word dropout (``--word-dropout``). Same embedding, LSTM width and
vocabulary everywhere; the VAE adds the encoder and z. On the test split (sentences of at most
``--max-len`` words, vocabulary ``--vocab-size`` with <unk>): NLL per sentence (−log p(w); the
VAE's by importance sampling with K = ``--iwae-k`` draws from q(z|w) through
``pyro_vi.log_marginal``, the LM's exact), perplexity per word (counting <eos>), the KL term
KL(q(z|w) || p(z)) and the active units (Cov_w E_q[z_u] > 0.01).

    OMP_NUM_THREADS=1 python benchmarks/text_vae.py --epochs 6 --anneal-epochs 3 --iwae-k 50

Last line: ``{"nll_vae": .., "nll_lm": .., "kl": .., "active_units": .., ...}`` (the VAE with the
tricks; ``*_plain`` for the VAE without them; nats per sentence).

    OMP_NUM_THREADS=1 python benchmarks/text_vae.py --step-speed --epochs 4

instead times the training step of the LM and of the VAE (word dropout 0.3): ``fit`` with every
step eager (``capture=False``) against captured steps (``capture=True``), alternating runs
(eager, captured, eager, captured), each ``--epochs`` epochs; ms/step is the median over runs of
the median epoch after the first two (the captures of the batch shapes happen early). Last line:
``{"lm_eager_ms": .., "lm_captured_ms": .., "vae_eager_ms": .., "vae_captured_ms": ..}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyro
import torch

from pyro_vi import fit
from pyro_vi.data import load
from pyro_vi.models.text_vae import LanguageModel, TextVAE, sentence_metrics


def train(name, model_obj, data, a, anneal_epochs=0, log=print) -> list[dict]:
    """Fit ``model_obj`` and return its history, with the validation KL per epoch."""
    pyro.clear_param_store()  # every model registers its own networks
    pyro.set_rng_seed(a.seed)

    def record_kl(rec):
        if model_obj.z_dim:
            with torch.no_grad():
                rec["valid_kl"] = float(model_obj.kl(data.valid.x).mean())
        log(f"{name} epoch {rec['epoch']}: train ELBO {rec['train_elbo']:.2f}, valid ELBO "
            f"{rec['valid_elbo']:.2f}, KL {rec.get('valid_kl', 0.0):.2f}, beta "
            f"{rec['beta']:.2f}, {rec['seconds']:.0f} s")  # fmt: skip

    result = fit(model_obj.model, model_obj.guide, data, epochs=a.epochs, batch_size=a.batch_size,
                 lr=a.lr, anneal_epochs=anneal_epochs, early_stopping=a.epochs, seed=a.seed,
                 device=a.device, progress=False, callback=record_kl)  # fmt: skip
    log(f"{name}: best validation epoch {result.best_epoch}, {result.seconds:.0f} s")
    return result.history


def step_speed(data, a, sizes) -> dict:
    """ms/step of eager against captured ``fit`` steps for the LM and the VAE (see the module)."""
    make = {"lm": lambda: LanguageModel.from_data(data, **sizes),
            "vae": lambda: TextVAE.from_data(data, z_dim=a.z_dim, word_dropout=a.word_dropout,
                                             **sizes)}  # fmt: skip
    out = {}
    for name, build in make.items():
        times: dict[str, list[float]] = {"eager": [], "captured": []}
        for capture in (False, True, False, True):
            pyro.clear_param_store()
            pyro.set_rng_seed(a.seed)
            obj = build()
            result = fit(obj.model, obj.guide, data.train, epochs=a.epochs, batch_size=a.batch_size,
                         lr=a.lr, seed=a.seed, device=a.device, progress=False,
                         capture=capture)  # fmt: skip
            per_step = [1e3 / h["steps_per_second"] for h in result.history[2:]]
            mode = "captured" if capture else "eager"
            times[mode].append(statistics.median(per_step))
            print(f"{name} {mode:>8}: {times[mode][-1]:.2f} ms/step ({result.step}), whole fit "
                  f"{result.seconds:.1f} s", flush=True)  # fmt: skip
        for mode, ts in times.items():
            out[f"{name}_{mode}_ms"] = round(statistics.median(ts), 3)
    print(json.dumps(out))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--anneal-epochs", type=int, default=3)
    p.add_argument("--word-dropout", type=float, default=0.3)
    p.add_argument("--vocab-size", type=int, default=5000)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--z-dim", type=int, default=32)
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--iwae-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--step-speed", action="store_true", help="time eager against captured steps")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    data = load("wordnet", vocab_size=a.vocab_size, max_len=a.max_len, seed=a.seed, device=a.device)
    sizes = dict(embed_dim=a.embed_dim, hidden=a.hidden, cell=a.cell)
    if a.step_speed:
        if a.epochs < 3:
            p.error("--step-speed needs --epochs 3 or more (the first two are not timed)")
        return step_speed(data, a, sizes)
    runs = {
        "lm": (LanguageModel.from_data(data, **sizes), 0),
        "vae_plain": (TextVAE.from_data(data, z_dim=a.z_dim, **sizes), 0),
        "vae": (TextVAE.from_data(data, z_dim=a.z_dim, word_dropout=a.word_dropout, **sizes),
                a.anneal_epochs),
    }  # fmt: skip
    print(f"WordNet: {len(data.train)}/{len(data.valid)}/{len(data.test)} sentences, vocabulary "
          f"{len(data.info['vocab'])}, train <unk> rate {data.info['train_unk_rate']:.3f}",
          flush=True)  # fmt: skip
    metrics, histories = {}, {}
    for name, (model_obj, anneal) in runs.items():
        histories[name] = train(name, model_obj, data, a, anneal, lambda s: print(s, flush=True))
        t0 = time.perf_counter()
        torch.manual_seed(a.seed)
        metrics[name] = sentence_metrics(model_obj, data.test.x, num_samples=a.iwae_k)
        print(f"{name}: test evaluation {time.perf_counter() - t0:.0f} s", flush=True)

    lm = metrics["lm"]
    print(f"\nWordNet test split, {lm['sentences']} sentences, {lm['words']} words incl. <eos>; "
          f"VAE NLL by IS with K={a.iwae_k}")  # fmt: skip
    print(f"{'model':>26} {'NLL':>7} {'-ELBO':>7} {'PPL':>7} {'KL':>6} {'AU':>4}")
    labels = {"lm": "LSTM LM", "vae_plain": "VAE, no tricks",
              "vae": "VAE, annealing + word drop."}  # fmt: skip
    for name, m in metrics.items():
        print(f"{labels[name]:>26} {m['nll']:7.2f} {m['neg_elbo']:7.2f} {m['ppl']:7.1f} "
              f"{m['kl']:6.2f} {m['active_units']:4d}")  # fmt: skip
    vae, plain = metrics["vae"], metrics["vae_plain"]
    out = {
        "nll_vae": round(vae["nll"], 3),
        "nll_lm": round(lm["nll"], 3),
        "kl": round(vae["kl"], 3),
        "active_units": vae["active_units"],
        "ppl_vae": round(vae["ppl"], 2),
        "ppl_lm": round(lm["ppl"], 2),
        "nll_ratio": round(vae["nll"] / lm["nll"], 4),
        "nll_vae_plain": round(plain["nll"], 3),
        "kl_plain": round(plain["kl"], 4),
        "active_units_plain": plain["active_units"],
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
