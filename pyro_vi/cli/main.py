"""The ``pyro-vi`` command: ``fit``, ``evaluate`` and ``sample``.

Bad input ends with one line on stderr naming the problem and the fix, and exit code 2
(set ``PYRO_VI_DEBUG=1`` for the traceback)::

    pyro-vi fit vae --dataset digits --epochs 50 --out runs/digits
    pyro-vi evaluate runs/digits --iwae-k 5000
    pyro-vi sample runs/digits -n 64

``fit``'s model flags are not listed here: they are the parameters of each registered model's
``from_data`` (:mod:`pyro_vi.protocol`), each model's default shown in ``pyro-vi fit --help`` and
used where the flag is absent. Only ``fit`` imports the models (and torch): ``pyro-vi --help``
stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from pyro_vi.protocol import RUN_DEFAULTS, ModelError, Option, Text, options, registered

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


def _whole(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None


def _number(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None


_TYPES = {(int, False): _whole, (int, True): _positive_int, (float, False): _number,
          (float, True): _positive_float, (str, False): str}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"pyro-vi: error: {message} (see {self.prog} --help)\n")


def parser(models: bool = True) -> argparse.ArgumentParser:
    """The argument parser of ``pyro-vi``; with ``models`` (which imports them, and torch), the
    flags of every registered model on ``fit``."""
    p = _Parser(prog="pyro-vi", description="Latent-variable models fitted by SVI with Pyro.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    registry = registered() if models else {}
    f = sub.add_parser("fit", help="fit a model/guide pair and write a run directory",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=_models_epilog(registry))  # fmt: skip
    _fit_flags(f, registry)
    if models:
        _model_flags(f, registry)

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

    s = sub.add_parser("sample", help="samples from a run's model: a PNG grid, or sentences")
    s.add_argument("run_dir")
    s.add_argument("-n", type=_positive_int, default=64, help="number of samples")
    s.add_argument("--out", default=None,
                   help="file (default RUN_DIR/samples-N.png, or .txt for sentences)")  # fmt: skip
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return p


def _by_model(registry: dict, key: str) -> str:
    """``"mdn inverse-sine, text-lm wordnet"``: the models' run defaults for ``key``."""
    return ", ".join(f"{m} {RUN_DEFAULTS[m][key]}" for m in sorted(registry)
                     if key in RUN_DEFAULTS.get(m, {}))  # fmt: skip


def _fit_flags(f: argparse.ArgumentParser, registry: dict) -> None:
    """The flags of ``fit`` that every model shares: data, optimization, run directory."""
    models = ", ".join(sorted(registry)) or "e.g. vae"
    f.add_argument("model", help=f"registered model ({models}; its flags: below)")
    f.set_defaults(model_flags=())
    own = {k: _by_model(registry, k) for k in ("dataset", "corpus", "loss")}
    own = {k: f": {v}" if v else "" for k, v in own.items()}
    f.add_argument("--dataset", default=None,
                   help="digits, fashion-mnist, mnist, gaussian2d, ... (default: the model's "
                        f"own{own['dataset']}; else digits)")  # fmt: skip
    f.add_argument("--binarize", default="auto", choices=["auto", "dynamic", "static", "none"],
                   help="auto: dynamic for image sets, none otherwise")  # fmt: skip
    f.add_argument("--corpus", default=None, metavar="wordnet|PATH",
                   help="WordNet's example sentences or a file with one sentence per line "
                        "(instead of --dataset; default: the model's own"
                        f"{own['corpus']})")  # fmt: skip
    f.add_argument("--vocab-size", type=_positive_int, default=10000,
                   help="corpus: vocabulary incl. <pad> <unk> <bos> <eos>")  # fmt: skip
    f.add_argument("--max-len", type=_positive_int, default=20,
                   help="corpus: longer sentences are dropped")  # fmt: skip
    f.add_argument("--epochs", type=_positive_int, default=50, help="total epochs")
    f.add_argument("--batch-size", type=_positive_int, default=128)
    f.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate")
    f.add_argument("--lr-decay", type=_positive_float, default=1.0, help="per-epoch factor")
    f.add_argument("--optimizer", default="adam", choices=["adam", "clippedadam", "sgd"])
    f.add_argument("--loss", default=None,
                   choices=["elbo", "meanfield", "iwae", "tracegraph", "enum"],
                   help=f"default: the model's own{own['loss']}; else elbo")  # fmt: skip
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    if value is None:  # the help says what the model does then
        return "none"
    return " ".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def _model_flags(f: argparse.ArgumentParser, registry: dict) -> None:
    """One flag per parameter of the registered models' ``from_data`` (:mod:`pyro_vi.protocol`):
    its type and choices from the annotation, its help from the docstring, each model's own
    default listed; absent flags leave the model's default in force."""
    uses: dict[str, list[tuple[str, Option]]] = {}
    for model in sorted(registry):
        for opt in options(registry[model]).values():
            if opt.flag:
                uses.setdefault(opt.name, []).append((model, opt))
    group = f.add_argument_group("model options (from_data's parameters; [model default])")
    for name, pairs in uses.items():
        first = pairs[0][1]
        text = next((o.help for _, o in pairs if o.help), "")
        defaults = ", ".join(f"{m} {_shown(o.default)}" for m, o in pairs)
        kw: dict = dict(default=argparse.SUPPRESS, help=f"{text} [{defaults}]".replace("%", "%%"))
        if first.kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _TYPES[first.kind, first.positive and first.kind is not str]
            choices = list(dict.fromkeys(c for _, o in pairs for c in o.choices or ()))
            kw.update(choices=choices or None, nargs="+" if first.many else None)
        try:
            group.add_argument(_flag(name), **kw)
        except argparse.ArgumentError:
            models = ", ".join(m for m, _ in pairs)
            raise ModelError(f"option {name!r} of {models} clashes with pyro-vi fit's own "
                             f"{_flag(name)}: rename the parameter") from None  # fmt: skip
    f.set_defaults(model_flags=tuple(uses))


def _models_epilog(registry: dict) -> str | None:
    """Which flags each registered model takes."""
    if not registry:
        return None
    import textwrap

    lines = ["models (pyro-vi fit MODEL) and their flags:"]
    for model in sorted(registry):
        lines += textwrap.wrap(_summary(registry[model]), 78, initial_indent=f"  {model:10s} ",
                               subsequent_indent=" " * 13)  # fmt: skip
        flags = [_flag(o.name) for o in options(registry[model]).values() if o.flag]
        lines += textwrap.wrap(" ".join(flags) or "(none)", 78, initial_indent=" " * 13,
                               subsequent_indent=" " * 13, break_on_hyphens=False)  # fmt: skip
    return "\n".join(lines)


def _summary(cls: type) -> str:
    """The first clause of a model class's docstring, without reST roles."""
    import re

    first = " ".join((cls.__doc__ or cls.__name__).strip().split("\n\n")[0].split())
    first = re.sub(r":\w+:`~?([^`]+)`", r"\1", first).split(";")[0].split(". ")[0]
    return first.rstrip(".")


def _given_options(a) -> dict:
    """The model flags on the command line, checked against the model's ``from_data``."""
    given = {k: v for k, v in vars(a).items() if k in a.model_flags}
    cls = registered().get(a.model)
    if cls is None:
        return given
    takes = options(cls)
    for key in given:
        if key not in takes:
            raise ValueError(f"{_flag(key)} does not apply to model {a.model!r}: drop it")
    return given


def _fit(a) -> dict | None:
    from pyro_vi.cli.runs import model_class, train_run
    from pyro_vi.infer.distributed import launched

    model_options = _given_options(a)
    defaults = {"dataset": "digits", "loss": "elbo", **RUN_DEFAULTS.get(a.model, {})}
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
    model_class(a.model)  # an unknown name fails before any data are loaded
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

    from pyro_vi.cli.runs import item_suffix, load_run, write_item

    model_obj, data, _ = load_run(a.run_dir, a.device)
    torch.manual_seed(a.seed)
    item = model_obj.samples(a.n, data)
    suffix = item_suffix(item)
    out = write_item(item, a.out or Path(a.run_dir) / f"samples-{a.n}{suffix}")
    if isinstance(item, Text):  # sentences: printed, one per line, and kept
        print("\n".join(item.lines))
    return {"samples": a.n, suffix[1:]: str(out)}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:  # only ``fit`` needs the models' flags (and so torch): --help elsewhere stays fast
        a = parser(models=args[:1] == ["fit"]).parse_args(args)
    except SystemExit as e:  # --help (0) or a bad argument (2, message already printed)
        if e.code == 0 and argv is not None and "--help" in argv:
            raise
        return int(e.code or 0)
    try:
        if a.command == "fit":
            out = _fit(a)  # None on the ranks > 0 of a distributed run: they print nothing
            out = out and {k: v for k, v in out.items() if k != "history"}
        elif a.command == "evaluate":
            from pyro_vi.cli.runs import evaluate_run

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
