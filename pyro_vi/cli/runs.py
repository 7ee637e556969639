"""Run directories: the main job (fit a registered model, evaluate it, draw its figures) and
everything needed to load a run back.

A run directory holds ``config.json`` (model, data and fit options, seed, versions),
``checkpoint.pt`` (written by :func:`pyro_vi.fit`), ``metrics.json`` and PNG figures. JSON files are
written atomically. Example::

    run = train_run("vae", "runs/demo", dataset="digits", epochs=50)
    model, data, config = load_run("runs/demo")
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import pyro
import torch

from pyro_vi import __version__
from pyro_vi.atomic import atomic_open
from pyro_vi.data import IMAGE_SETS, Dataset, load
from pyro_vi.evaluate.bounds import GlobalLatentsError, elbo, log_marginal, max_plate_nesting
from pyro_vi.infer.calling import Calling
from pyro_vi.infer.checkpoint import load_checkpoint, restore_params
from pyro_vi.infer.distributed import setup as setup_distributed
from pyro_vi.infer.training import CHECKPOINT, FitError, check_finite, fit, resolve_device
from pyro_vi.protocol import Density, Images, Item, Model, Scatter, Text, registered
from pyro_vi.protocol import options as model_options

__all__ = ["RunError", "train_run", "load_run", "evaluate_run", "write_json", "versions"]


class RunError(ValueError):
    """A run directory cannot be created or used; the message names the problem and the fix."""


def versions() -> dict:
    """Versions of everything a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"pyro_vi": __version__, "python": platform.python_version()}
    for dist_name in ("torch", "pyro-ppl", "numpy", "arviz", "scikit-learn"):
        try:
            out[dist_name] = version(dist_name)
        except PackageNotFoundError:
            out[dist_name] = None
    out["machine"] = f"{platform.machine()}, {os.cpu_count()} cpus"
    out["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
    return out


def write_json(obj, path: str | os.PathLike) -> None:
    """Write JSON atomically (:func:`pyro_vi.atomic.atomic_open`)."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.write("\n")


def model_class(name: str) -> type[Model]:
    """The class registered as ``name`` (:func:`pyro_vi.protocol.register`)."""
    registry = registered()
    if name not in registry:
        raise RunError(f"unknown model {name!r}: choose one of {', '.join(sorted(registry))}")
    return registry[name]


def build_model(name: str, data: Dataset, options: dict) -> Model:
    """Instantiate registered model ``name`` for ``data`` with ``options`` (parameters of its
    ``from_data``)."""
    cls = model_class(name)
    known = model_options(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise RunError(f"model {name!r} takes no option {unknown[0]!r}: choose from "
                       f"{', '.join(known)}")  # fmt: skip
    return cls.from_data(data, **options)


def model_inputs(model_obj, split, seed: int = 0, rows: int | None = None):
    """``(args, kwargs)`` to call a model/guide pair on a split: x, plus ``y=`` labels when the
    model's signature takes them (a fixed binarization of dynamic splits)."""
    x = split.evaluation_x(seed)
    kw = Calling.of(model_obj.model, split.fields, labels=split.y is not None).whole(split)
    if rows is not None:
        x, kw = x[:rows], {k: v[:rows] for k, v in kw.items()}
    return (x,), kw


def _per_datapoint(fn, model_obj, args, kw, **options) -> torch.Tensor:
    """``fn`` (elbo or log_marginal) of the model/guide pair per datapoint, in the model's
    ``eval_block`` = (rows per call, particles per chunk), e.g. sentences (a softmax over the
    vocabulary per word); all rows at once where that is (None, None)."""
    rows, chunk = model_obj.eval_block
    n = len(args[0])
    rows = rows or n
    parts = [
        fn(model_obj.model, model_obj.guide, *(a[i : i + rows] for a in args), chunk_size=chunk,
           **{k: v[i : i + rows] for k, v in kw.items()}, **options)
        for i in range(0, n, rows)
    ]  # fmt: skip
    return torch.cat(parts)


def _evaluate(model_obj, data: Dataset, iwae_k: int, particles: int = 10, seed: int = 0) -> dict:
    out = {}
    with torch.no_grad():
        for split in ("train", "valid", "test"):
            args, kw = model_inputs(model_obj, getattr(data, split), seed)
            v = _per_datapoint(elbo, model_obj, args, kw, num_particles=particles)
            out[f"{split}_elbo"] = float(v.mean())
        if iwae_k:
            args, kw = model_inputs(model_obj, data.test, seed)
            try:
                lm = _per_datapoint(log_marginal, model_obj, args, kw, num_samples=iwae_k)
            except GlobalLatentsError:  # log p(x_i) is not defined per point (a GMM's globals)
                out["test_log_px"] = None
                out["test_log_px_note"] = "not per datapoint: the model has global latents"
                return out
            out["test_log_px"] = float(lm.mean())
            out["test_nll"] = -out["test_log_px"]
            out["iwae_k"] = iwae_k
    return out


def train_run(
    model_name: str,
    out: str | os.PathLike,
    *,
    dataset: str = "digits",
    binarize: str | None = "auto",
    model_options: dict | None = None,
    fit_options: dict | None = None,
    data_options: dict | None = None,
    seed: int = 0,
    device: str = "auto",
    iwae_k: int = 1000,
    overwrite: bool = False,
    resume: bool = False,
    figures: bool = True,
    argv: list[str] | None = None,
) -> dict | None:
    """Fit registered model ``model_name`` on ``dataset``, evaluate it and write the run directory.

    ``binarize="auto"`` binarizes image sets dynamically and leaves other data as they are.
    Everything that can be checked is checked before the directory is created, so bad input
    leaves no files behind. With ``resume=True``, ``out`` is an existing run that goes on in place.
    ``fit_options["distributed"]`` (not stored: it is a property of the launch) trains
    data-parallel (:mod:`pyro_vi.infer.distributed`); only rank 0 writes and evaluates.
    Returns the metrics (None on the other ranks). ``data_options`` go to
    :func:`pyro_vi.data.load` (e.g. ``text``, ``vocab_size``, ``max_len`` of a corpus).
    """
    out = Path(out)
    fit_options = dict(fit_options or {})
    model_options = dict(model_options or {})
    data_options = dict(data_options or {})
    saved_config = read_config(out) if resume else None
    if resume and device == "auto":  # the device type the run was written on, where there is one
        saved = torch.device(saved_config.get("device", "cpu")).type
        device = saved if saved != "cuda" or torch.cuda.is_available() else "auto"
    dev = resolve_device(device)
    ddp = setup_distributed(dev) if fit_options.pop("distributed", False) else None
    writer = ddp is None or ddp.is_writer
    if ddp is not None:
        dev = ddp.device
    if resume:
        config = saved_config
        model_name, dataset, binarize = config["model"], config["dataset"], config["binarize"]
        seed, model_options = config["seed"], _stored_options(config)
        data_options = config.get("data_options", {})
        fit_options = {**config["fit_options"], **fit_options}
        load_checkpoint(out / CHECKPOINT)  # fails early on a corrupt checkpoint
    elif out.exists() and any(out.iterdir()) and not overwrite:
        raise RunError(
            f"output directory {out} is not empty: pick another --out or add --overwrite"
        )
    if binarize == "auto":
        binarize = "dynamic" if dataset in IMAGE_SETS else None
    pyro.set_rng_seed(seed)
    data = load(dataset, binarize=binarize, seed=seed, device=dev, **data_options)
    for split in ("train", "valid", "test"):
        check_finite(getattr(data, split), split)
    pyro.clear_param_store()
    model_obj = build_model(model_name, data, model_options)
    model_obj.check(data.train.x if binarize != "dynamic" else data.train.evaluation_x(seed))
    if ddp is not None:
        ddp.barrier()  # every rank has checked `out` before rank 0 changes it
    if not resume and writer:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
    config = {
        "model": model_name, "dataset": dataset, "binarize": binarize, "seed": seed,
        "model_options": model_options, "model_config": model_obj.config,
        "data_options": data_options, "fit_options": fit_options, "device": str(dev),
        "argv": argv or sys.argv,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }  # fmt: skip
    if ddp is not None:
        config["world_size"] = ddp.world_size
    if writer:
        write_json(config, out / "config.json")
    result = fit(
        model_obj.model, model_obj.guide, data, seed=seed, device=dev, checkpoint_dir=out,
        resume=resume, run_info={"model": model_name}, distributed=ddp or False, **fit_options,
    )  # fmt: skip
    if not writer:
        return None
    metrics = _evaluate(model_obj, data, iwae_k, seed=seed)
    metrics.update(epochs=len(result.history), seconds=result.seconds, best_epoch=result.best_epoch,
                   step=result.step,
                   history=result.history)  # fmt: skip
    write_json(metrics, out / "metrics.json")
    if figures:
        draw_figures(model_obj, data, result.history, out, seed)
    return metrics


def draw_figures(model_obj: Model, data: Dataset, history: list[dict], out: Path,
                 seed: int = 0) -> None:  # fmt: skip
    """``elbo.png``, then each item of the model's ``report(data, seed)`` (torch's global seed
    set to ``seed`` first) as ``out/STEM.png``, ``.json`` or ``.txt``."""
    from pyro_vi.diagnostics.plots import elbo_curve  # matplotlib only where drawn

    elbo_curve(history, out / "elbo.png")
    torch.manual_seed(seed)
    for stem, item in model_obj.report(data, seed).items():
        write_item(item, out / f"{stem}{item_suffix(item)}")


def item_suffix(item: Item) -> str:
    """The file suffix an :data:`~pyro_vi.protocol.Item` is written with."""
    if isinstance(item, dict):
        return ".json"
    if isinstance(item, Text):
        return ".txt"
    if isinstance(item, Images | Scatter | Density):
        return ".png"
    raise RunError(f"a model showed a {type(item).__name__}: return an Item of pyro_vi.protocol")


def write_item(item: Item, path: str | os.PathLike) -> Path:
    """Write what a model shows (:data:`pyro_vi.protocol.Item`) to ``path`` atomically: a dict
    as JSON, :class:`~pyro_vi.protocol.Text` one line each, figures as PNG."""
    path = Path(path)
    suffix = item_suffix(item)
    if suffix == ".json":
        write_json(item, path)
    elif suffix == ".txt":
        with atomic_open(path, "w") as f:
            f.write("\n".join(item.lines) + "\n")
    else:
        from pyro_vi.diagnostics.plots import draw, save_figure

        save_figure(draw(item), path)
    return path


def _stored_options(config: dict) -> dict:
    """A run's ``model_options``, less those that a pyro-vi before the model protocol recorded
    for every model (``z_dim``, ``hidden``, ``activation``) where this model does not take them
    (its ``from_data`` ignored them then)."""
    known = model_options(model_class(config["model"]))
    stale = {"z_dim", "hidden", "activation"}
    return {k: v for k, v in config["model_options"].items() if k in known or k not in stale}


def read_config(run_dir: str | os.PathLike) -> dict:
    """``config.json`` of a run directory, with one-line errors when it is missing or broken."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist: pass a directory written by fit")
    try:
        config = json.loads(path.read_text())
        for key in ("model", "dataset", "binarize", "seed", "model_config", "fit_options"):
            config[key]
    except FileNotFoundError:
        raise RunError(f"{run_dir} has no config.json: pass a directory written by fit") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise RunError(f"{path} is corrupt: rerun the fit that wrote it") from None
    return config


def load_run(run_dir: str | os.PathLike, device: str = "auto"):
    """Rebuild the model of a run and load its checkpoint: returns (model_obj, data, config)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    dev = resolve_device(device)
    registry = registered()
    if config["model"] not in registry:
        raise RunError(f"{run_dir} holds model {config['model']!r}, unknown to this pyro-vi")
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=dev)
    data = load(config["dataset"], binarize=config["binarize"], seed=config["seed"], device=dev,
                **config.get("data_options", {}))  # fmt: skip
    pyro.clear_param_store()
    model_obj = registry[config["model"]](**config["model_config"]).to(dev)
    args, kw = model_inputs(model_obj, data.test, config["seed"], rows=2)
    max_plate_nesting(model_obj.model, model_obj.guide, *args, **kw)  # registers the params
    restore_params(state["params"], run_dir / CHECKPOINT)
    return model_obj, data, config


def evaluate_run(
    run_dir: str | os.PathLike,
    iwae_k: int = 1000,
    device: str = "auto",
    gaps: bool = False,
    test_size: int = 500,
) -> dict:
    """Evaluate a saved run; the result also goes to ``evaluation.json`` in the run directory.

    With ``gaps=True`` the amortization-gap report (:func:`pyro_vi.studies.gaps.amortization_gaps`)
    of the first ``test_size`` test points is added, its per-datapoint values in ``gaps.json``.
    """
    model_obj, data, config = load_run(run_dir, device)
    if gaps:  # the local family is the guide's Gaussian: check before the long evaluation
        from pyro_vi.infer.guides import GuideError, guide_normal_params

        (x,), _ = model_inputs(model_obj, data.test, config["seed"], rows=2)
        try:
            guide_normal_params(model_obj.guide, x)
        except GuideError as e:
            what = e.args[0].split(":")[0]
            raise RunError(f"--gaps needs a Gaussian q(z|x) ({what}): drop --gaps") from e
    torch.manual_seed(config["seed"])
    metrics = _evaluate(model_obj, data, iwae_k, seed=config["seed"])
    if gaps:
        from pyro_vi.studies.gaps import amortization_gaps

        (x,), _ = model_inputs(model_obj, data.test, config["seed"], rows=test_size)
        report = amortization_gaps(model_obj.model, model_obj, x, num_samples=iwae_k,
                                   seed=config["seed"])  # fmt: skip
        metrics["gaps"] = {k: float(v) for k, v in report["mean"].items()}
        per_point = {k: v.tolist() for k, v in report.items() if torch.is_tensor(v)}
        write_json(per_point, Path(run_dir) / "gaps.json")
    write_json(metrics, Path(run_dir) / "evaluation.json")
    return metrics


__all__ += ["FitError", "build_model", "model_class", "draw_figures", "write_item", "read_config",
            "model_inputs"]  # fmt: skip
