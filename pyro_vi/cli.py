"""The ``pyro-vi`` command: ``fit``, ``evaluate`` and ``sample``.

Bad input ends with one line on stderr naming the problem and the fix, and exit code 2
(set ``PYRO_VI_DEBUG=1`` for the traceback)::

    pyro-vi fit vae --dataset digits --epochs 50 --out runs/digits
    pyro-vi evaluate runs/digits --iwae-k 5000
    pyro-vi sample runs/digits -n 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main", "parser"]


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"pyro-vi: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-vi``."""
    p = _Parser(prog="pyro-vi", description="Latent-variable models fitted by SVI with Pyro.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    f = sub.add_parser("fit", help="fit a model/guide pair and write a run directory")
    f.add_argument("model", help="registered model name (e.g. vae)")
    f.add_argument("--dataset", default=None,
                   help="digits, fashion-mnist, mnist, gaussian2d, ... (default: the model's "
                        "own, e.g. inverse-sine for mdn, wordnet for text-vae; "
                        "else digits)")  # fmt: skip
    f.add_argument("--binarize", default="auto", choices=["auto", "dynamic", "static", "none"],
                   help="auto: dynamic for image sets, none otherwise")  # fmt: skip
    f.add_argument("--likelihood", default=None, choices=["bernoulli", "normal"],
                   help="default: bernoulli for binarized images, normal otherwise")  # fmt: skip
    f.add_argument("--task", default=None, choices=["quadrant", "label"], help="cvae task")
    f.add_argument("--quadrants", type=int, default=None, choices=[1, 2, 3],
                   help="cvae: visible quadrants")  # fmt: skip
    f.add_argument("--corpus", default=None, metavar="wordnet|PATH",
                   help="text-vae, text-lm: WordNet's example sentences or a file with one "
                        "sentence per line (instead of --dataset)")  # fmt: skip
    f.add_argument("--vocab-size", type=_positive_int, default=10000,
                   help="corpus: vocabulary incl. <pad> <unk> <bos> <eos>")  # fmt: skip
    f.add_argument("--max-len", type=_positive_int, default=20,
                   help="corpus: longer sentences are dropped")  # fmt: skip
    f.add_argument("--embed-dim", type=_positive_int, default=None, help="text: embedding width")
    f.add_argument("--word-dropout", type=float, default=None,
                   help="text-vae: decoder inputs become <unk> with this probability")  # fmt: skip
    f.add_argument("--epochs", type=_positive_int, default=50, help="total epochs")
    f.add_argument("--batch-size", type=_positive_int, default=128)
    f.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate")
    f.add_argument("--lr-decay", type=_positive_float, default=1.0, help="per-epoch factor")
    f.add_argument("--optimizer", default="adam", choices=["adam", "clippedadam", "sgd"])
    f.add_argument("--z-dim", type=_positive_int, default=20, help="latent dimension")
    f.add_argument("--hidden", type=_positive_int, nargs="+", default=[400], help="hidden widths")
    f.add_argument("--activation", default="relu", choices=["relu", "tanh", "softplus", "elu"])
    f.add_argument("--guide-flow", default=None, choices=["nice", "realnvp"],
                   help="vae: q(z|x) = encoder Gaussian through conditional couplings")  # fmt: skip
    f.add_argument("--prior-flow", default=None, choices=["nice", "realnvp"],
                   help="vae: p(z) as N(0, I) through a learned flow")  # fmt: skip
    f.add_argument("--flow-layers", type=_positive_int, default=None,
                   help="coupling layers of each flow (default 4)")  # fmt: skip
    f.add_argument("--components", type=int, default=None,
                   help="mdn: mixture components K (1: the unimodal Gaussian network)")  # fmt: skip
    f.add_argument("--mode", default=None, choices=["enum", "map"],
                   help="mdn: z summed out exactly (use --loss enum) or hard EM")  # fmt: skip
    f.add_argument("--y-dim", type=_positive_int, default=None,
                   help="mdn: the last Y_DIM columns of a row are y (default 1)")  # fmt: skip
    f.add_argument("--loss", default=None,
                   choices=["elbo", "meanfield", "iwae", "tracegraph", "enum"],
                   help="default: the model's own (enum for mdn), else elbo")  # fmt: skip
    f.add_argument("--num-particles", type=_positive_int, default=1)
    f.add_argument("--anneal-epochs", type=int, default=0, help="epochs of linear KL warm-up")
    f.add_argument("--early-stopping", type=_positive_int, default=None, help="patience (epochs)")
    f.add_argument("--checkpoint-every", type=_positive_int, default=1, help="epochs")
    f.add_argument("--iwae-k", type=int, default=1000, help="particles for the final log p(x)")
    f.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    f.add_argument("--seed", type=int, default=0, help="one seed for everything")
    f.add_argument("--out", default=None, help="run directory (default runs/MODEL-DATASET)")
    f.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    f.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue that run in place (--epochs is the total)")  # fmt: skip
    f.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    f.add_argument("--no-capture", action="store_true",
                   help="run every step eagerly (default: replay a captured graph in runs of "
                        "500 steps or more)")  # fmt: skip
    f.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes torchrun started (on by default when "
                        "WORLD_SIZE > 1); --batch-size is the global batch")  # fmt: skip

    e = sub.add_parser("evaluate", help="ELBO and IWAE log p(x) of a run, as JSON")
    e.add_argument("run_dir")
    e.add_argument("--iwae-k", type=_positive_int, default=1000, help="importance samples")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument(
        "--gaps",
        action="store_true",
        help="amortization-gap report: amortized vs locally optimized ELBO vs log p(x)",
    )
    e.add_argument("--test-size", type=_positive_int, default=500, help="test points for --gaps")

    s = sub.add_parser("sample", help="a PNG grid of samples from a run's model")
    s.add_argument("run_dir")
    s.add_argument("-n", type=_positive_int, default=64, help="number of samples")
    s.add_argument("--out", default=None, help="PNG path (default RUN_DIR/samples-N.png)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def _defaults(model: str) -> dict:
    """What a registered model asks for when the command line does not say: its class's
    ``cli_defaults`` (``dataset``, ``corpus``, ``loss``), over digits and the ELBO."""
    from .models import REGISTRY

    return {"dataset": "digits", "loss": "elbo", **getattr(REGISTRY.get(model), "cli_defaults", {})}


def _check_applies(model: str, key: str) -> None:
    """A model-specific flag given for a registered model whose constructor does not take it."""
    import inspect

    from .models import REGISTRY

    cls = REGISTRY.get(model)
    if cls is not None and key not in inspect.signature(cls).parameters:
        flag = "--" + key.replace("_", "-")
        raise ValueError(f"{flag} does not apply to model {model!r}: drop it")


def _fit(a) -> dict | None:
    from .distributed import launched
    from .runs import train_run

    model_options = dict(z_dim=a.z_dim, hidden=a.hidden, activation=a.activation)
    model_keys = ("likelihood", "task", "quadrants", "guide_flow", "prior_flow", "flow_layers")
    model_keys += ("embed_dim", "word_dropout")
    model_keys += ("components", "mode", "y_dim")
    for key in model_keys:  # model options given on the command line
        if getattr(a, key) is not None:
            model_options[key] = getattr(a, key)
            _check_applies(a.model, key)
    defaults = _defaults(a.model)
    fit_options = dict(
        epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, lr_decay=a.lr_decay,
        optimizer=a.optimizer, loss=a.loss or defaults["loss"], num_particles=a.num_particles,
        anneal_epochs=a.anneal_epochs, early_stopping=a.early_stopping,
        checkpoint_every=a.checkpoint_every, capture=False if a.no_capture else "auto",
    )  # fmt: skip
    fit_options["distributed"] = a.distributed or launched()  # under torchrun: data-parallel
    if a.resume:
        keep = {"epochs", "checkpoint_every", "distributed", "capture"}  # the rest: the config
        return train_run(
            a.model, a.resume, resume=True, iwae_k=a.iwae_k, device=a.device,
            fit_options={k: v for k, v in fit_options.items() if k in keep},
            figures=not a.no_figures, argv=sys.argv,
        )  # fmt: skip
    dataset, data_options = a.dataset, {}
    corpus = a.corpus or (defaults.get("corpus") if a.dataset is None else None)
    if corpus is not None:  # sentences: token ids with a capped vocabulary
        dataset = corpus
        data_options = dict(text=True, vocab_size=a.vocab_size, max_len=a.max_len)
    dataset = dataset or defaults["dataset"]
    out = a.out or f"runs/{a.model}-{Path(dataset).stem}"
    return train_run(
        a.model, out, dataset=dataset, binarize=None if a.binarize == "none" else a.binarize,
        model_options=model_options, fit_options=fit_options, data_options=data_options,
        seed=a.seed, device=a.device,
        iwae_k=a.iwae_k, overwrite=a.overwrite, figures=not a.no_figures, argv=sys.argv,
    )  # fmt: skip


def _sample(a) -> dict:
    import torch

    from .plots import image_grid
    from .runs import load_run

    model_obj, data, _ = load_run(a.run_dir, a.device)
    torch.manual_seed(a.seed)
    if hasattr(model_obj, "sample_text"):  # sentences: printed, one per line, and kept
        lines = model_obj.sample_text(a.n, data)
        txt = Path(a.out or Path(a.run_dir) / f"samples-{a.n}.txt")
        txt.write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return {"samples": a.n, "txt": str(txt)}
    out = Path(a.out or Path(a.run_dir) / f"samples-{a.n}.png")
    if hasattr(model_obj, "sample_grid"):  # e.g. several completions per input
        images, nrow = model_obj.sample_grid(a.n, data)
        image_grid(images, data.shape, out, nrow=nrow)
    elif len(data.shape) == 2:
        image_grid(model_obj.sample(a.n), data.shape, out)
    else:
        from .plots import latent_scatter

        latent_scatter(model_obj.sample(a.n), None, out)
    return {"samples": a.n, "png": str(out)}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    try:
        a = parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2, message already printed)
        if e.code == 0 and argv is not None and "--help" in argv:
            raise
        return int(e.code or 0)
    try:
        if a.command == "fit":
            out = _fit(a)  # None on the ranks > 0 of a distributed run: they print nothing
            out = out and {k: v for k, v in out.items() if k != "history"}
        elif a.command == "evaluate":
            from .runs import evaluate_run

            out = evaluate_run(a.run_dir, a.iwae_k, a.device, gaps=a.gaps, test_size=a.test_size)
        else:
            out = _sample(a)
    except (ValueError, OSError) as e:  # every bad input raises a ValueError subclass
        if os.environ.get("PYRO_VI_DEBUG"):
            raise
        print(f"pyro-vi: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-vi: interrupted; the last checkpoint is intact", file=sys.stderr)
        return 130
    if out is not None:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
