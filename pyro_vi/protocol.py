"""What a model must provide to be fitted by ``pyro-vi fit`` and kept in a run directory.

:class:`Model` is the contract, in one place: the required members (``from_data``, ``config``,
``model``, ``guide``, ``to``) and the optional ones with their defaults (``check``,
``eval_block``, ``report``, ``samples``). A model class derives from it (after ``nn.Module``) to
get the defaults, and registers for the CLI with one line::

    @register("vae")
    class VAE(nn.Module, Model):
        @classmethod
        def from_data(cls, data, z_dim: PositiveInt = 20, hidden: tuple[PositiveInt, ...] = (400,),
                      *, name: str = "vae") -> "VAE":
            ...

The CLI's model flags are not listed anywhere: they are the parameters of each registered
``from_data`` after ``data`` (keyword-only ones, after ``*``, are for Python callers), read by
:func:`options`. A parameter's annotation gives the flag's type (``int``, ``float``, ``str``,
``bool``; ``tuple[X, ...]`` for several values; ``Literal[...]`` for choices; ``| None`` for "the
model decides"; :data:`PositiveInt`/:data:`PositiveFloat` for values that must be > 0), its
default is the model's own default, and its help is the ``:param name:`` line of the docstring.
Several models may take the same flag; it then has one meaning (one type, one help) and each model
its own default. A model's ``report`` and ``samples`` return data (:class:`Images`,
:class:`Scatter`, :class:`Density`, :class:`Text`, or a ``dict`` for JSON); the run layer
(:mod:`pyro_vi.cli.runs`, :mod:`pyro_vi.cli.main`) draws and writes them.

This module imports neither torch nor Pyro, so ``pyro-vi --help`` stays fast.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Protocol, Union

if typing.TYPE_CHECKING:
    import torch

    from .data import Dataset

__all__ = [
    "Model", "ModelError", "register", "registered", "REGISTRY", "RUN_DEFAULTS", "Option",
    "options", "PositiveInt", "PositiveFloat", "Images", "Scatter", "Density", "Text", "Item",
]  # fmt: skip


class ModelError(ValueError):
    """A model class or its options do not meet the protocol; the message names the fix."""


class _Positive:
    """Marker in ``Annotated[..., _Positive()]``: the value must be > 0."""

    def __repr__(self) -> str:
        return "positive"


PositiveInt = Annotated[int, _Positive()]
"""An ``int`` option that must be > 0 (the CLI refuses 0 and negative values)."""
PositiveFloat = Annotated[float, _Positive()]
"""A ``float`` option that must be > 0."""


# --- what models show: data, drawn and written by the run layer -------------------------------


@dataclass
class Images:
    """Flattened images (rows, values in [0, 1]) of ``shape`` (H, W), tiled ``nrow`` per row."""

    images: torch.Tensor
    shape: tuple[int, int]
    nrow: int | None = None
    title: str | None = None


@dataclass
class Scatter:
    """Points (N, d), coloured by ``labels`` when given; beyond 2-D their principal plane."""

    points: torch.Tensor
    labels: torch.Tensor | None = None
    title: str | None = None


@dataclass
class Density:
    """Conditional densities p(y | x) of 1-D x and y as images over the range of ``rows``
    ([x, y]), one panel per entry of ``models`` (objects with ``density(inp, ys)``)."""

    models: dict[str, Any]
    rows: torch.Tensor


@dataclass
class Text:
    """Lines of text (written as a ``.txt`` file; ``pyro-vi sample`` also prints them)."""

    lines: list[str] = field(default_factory=list)


Item = Union[Images, Scatter, Density, Text, dict]  # noqa: UP007 (also evaluated at run time)
"""One thing a model shows: a figure's data, lines of text, or a ``dict`` (written as JSON)."""


# --- the protocol --------------------------------------------------------------------------------


class Model(Protocol):
    """A model/guide pair as the CLI and run directories use it.

    Required (no default):

    - ``from_data(data, **options)`` (classmethod): a model sized for a
      :class:`pyro_vi.data.Dataset`. Its parameters after ``data`` are the model's options and,
      unless keyword-only, its CLI flags (see the module docstring).
    - ``config``: a JSON-able dict such that ``type(m)(**m.config)`` rebuilds the model before
      training (:func:`pyro_vi.cli.runs.load_run` does this, then loads the checkpoint).
    - ``model(x, idx=None, size=None)`` and ``guide(...)``: the Pyro pair fitted by
      :func:`pyro_vi.fit` (a ``y=None`` keyword receives a labelled data set's labels).
    - ``to(device)``: move the parameters (``torch.nn.Module`` provides it).

    Optional (the defaults here; override to change them):

    - ``check(x)``: one-line errors for data the model cannot take (default: accepts all).
    - ``eval_block``: ``(rows per call, particles per chunk)`` when evaluating a split, or
      ``(None, None)`` (default) for all rows at once.
    - ``report(data, seed)``: what a run directory shows besides ``metrics.json`` and the ELBO
      curve, as ``{file stem: Item}`` (default: nothing).
    - ``samples(n, data)``: what ``pyro-vi sample -n N`` shows, one :data:`Item` (default: a
      one-line error).
    """

    config: dict[str, Any]
    eval_block: ClassVar[tuple[int | None, int | None]] = (None, None)

    @classmethod
    def from_data(cls, data: Dataset, **options: Any) -> Model:
        """A model sized for ``data``; required."""
        raise NotImplementedError

    def model(self, *args: Any, **kwargs: Any) -> None:
        """The Pyro model; required."""
        raise NotImplementedError

    def guide(self, *args: Any, **kwargs: Any) -> None:
        """The Pyro guide; required."""
        raise NotImplementedError

    def to(self, *args: Any, **kwargs: Any) -> Model:
        """Move the parameters to a device; required (``torch.nn.Module`` provides it)."""
        raise NotImplementedError

    def check(self, x: torch.Tensor) -> None:
        """One-line errors for data this model cannot take; by default it takes any."""

    def report(self, data: Dataset, seed: int = 0) -> dict[str, Item]:
        """``{file stem: Item}`` shown in a run directory; by default nothing."""
        return {}

    def samples(self, n: int, data: Dataset) -> Item:
        """What ``pyro-vi sample -n n`` shows; by default a one-line error."""
        raise ModelError(
            f"model {type(self).__name__} does not say how to show samples: give it a "
            "samples(n, data) method (pyro_vi.protocol.Model)"
        )


REQUIRED = ("from_data", "model", "guide", "to")

REGISTRY: dict[str, type] = {}
"""CLI name -> registered model class (filled by :func:`register`; see :func:`registered`)."""
RUN_DEFAULTS: dict[str, dict[str, str]] = {}
"""CLI name -> what ``pyro-vi fit NAME`` uses without ``--dataset``/``--corpus``/``--loss``."""


def register(
    name: str, *, dataset: str | None = None, corpus: str | None = None, loss: str | None = None
):
    """Class decorator: register a :class:`Model` for the CLI as ``name``; ``dataset``,
    ``corpus`` (a sentence corpus instead of a data set) and ``loss`` are what ``pyro-vi fit
    NAME`` uses when the command line does not say (else digits and the ELBO)::

        @register("mdn", dataset="inverse-sine", loss="enum")
        class MDN(nn.Module, Model): ...
    """

    def decorate(cls: type) -> type:
        if not isinstance(cls, type) or Model not in cls.__mro__:
            raise ModelError(f"register({name!r}): {cls!r} must be a class deriving from "
                             "pyro_vi.protocol.Model (after nn.Module)")  # fmt: skip
        missing = [m for m in REQUIRED if _defined_by(cls, m) is Model]
        if missing:
            raise ModelError(f"register({name!r}): {cls.__name__} lacks {', '.join(missing)}: "
                             "define it (see pyro_vi.protocol.Model)")  # fmt: skip
        old = REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ModelError(f"model name {name!r} is taken by {old.__name__}: pick another name")
        _check_meanings(name, options(cls))
        REGISTRY[name] = cls
        run = {"dataset": dataset, "corpus": corpus, "loss": loss}
        RUN_DEFAULTS[name] = {k: v for k, v in run.items() if v is not None}
        return cls

    return decorate


def _defined_by(cls: type, member: str) -> type:
    """The class of ``cls``'s MRO whose own namespace defines ``member``."""
    return next(k for k in cls.__mro__ if member in vars(k))


def registered() -> dict[str, type]:
    """:data:`REGISTRY` with the built-in models of :mod:`pyro_vi.models` registered."""
    import pyro_vi.models  # noqa: F401  (its modules register their classes)

    return REGISTRY


# --- options: the parameters of from_data ---------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One parameter of a model's ``from_data``: what the CLI needs to make a flag of it."""

    name: str
    kind: type  # int, float, str or bool (of each value when ``many``)
    default: Any
    many: bool = False  # several values (a tuple)
    choices: tuple | None = None
    positive: bool = False
    flag: bool = True  # False for keyword-only parameters (Python callers only)
    help: str = ""

    @property
    def meaning(self) -> tuple:
        """What must agree between models that share the flag."""
        return (self.kind, self.many, self.positive)


def options(cls: type) -> dict[str, Option]:
    """The options of ``cls.from_data`` in signature order, ``data`` aside; a ``**kwargs`` of it
    passes on to the ``from_data`` of the next class in the MRO, whose options then count too."""
    owner = _defined_by(cls, "from_data")
    fn = cls.from_data
    try:
        hints = typing.get_type_hints(fn, localns={cls.__name__: cls}, include_extras=True)
    except Exception as e:  # a name in an annotation that the module does not define
        raise ModelError(f"{cls.__name__}.from_data: annotation not resolvable ({e}): "
                         "import the names its annotations use") from None  # fmt: skip
    helps = _param_help(inspect.getdoc(fn) or "")
    out, passes_on = {}, False
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            passes_on |= p.kind == p.VAR_KEYWORD
            continue
        default = None if p.default is p.empty else p.default
        tp = hints.get(p.name, _type_of(default))
        kind, many, choices, positive = _parse(tp, f"{cls.__name__}.from_data({p.name})")
        out[p.name] = Option(p.name, kind, default, many, choices, positive,
                             flag=p.kind != p.KEYWORD_ONLY, help=helps.get(p.name, ""))  # fmt: skip
    later = cls.__mro__[cls.__mro__.index(owner) + 1 :]
    base = next((k for k in later if "from_data" in vars(k)), Model)
    if passes_on and base is not Model:
        out.update({k: v for k, v in options(base).items() if k not in out})
    return out


def _type_of(default: Any) -> Any:
    if isinstance(default, tuple | list):
        return tuple[type(default[0]) if default else str, ...]
    return str if default is None else type(default)


def _parse(tp: Any, where: str) -> tuple[type, bool, tuple | None, bool]:
    """``(kind, many, choices, positive)`` of an annotation."""
    positive = False
    if typing.get_origin(tp) is Annotated:
        positive = any(isinstance(m, _Positive) for m in tp.__metadata__)
        tp = typing.get_args(tp)[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        seqs = [a for a in parts if typing.get_origin(a) in (tuple, list)]
        if len(parts) == 1 or (len(parts) == 2 and len(seqs) == 1):  # X | None, X | tuple[X, ...]
            return _parse(seqs[0] if seqs else parts[0], where)
    elif origin is Literal:
        kinds = {type(a) for a in args}
        if len(kinds) == 1:
            return kinds.pop(), False, args, positive
    elif origin in (tuple, list) and args and (origin is list or args[-1] is Ellipsis):
        kind, _, choices, pos = _parse(args[0], where)
        return kind, True, choices, pos
    elif tp in (int, float, str, bool):
        return tp, False, None, positive
    raise ModelError(f"{where}: annotation {tp!r} has no command-line form: use int, float, str, "
                     "bool, Literal[...], tuple[X, ...] or X | None")  # fmt: skip


def _param_help(doc: str) -> dict[str, str]:
    """``{name: text}`` of the ``:param name: text`` entries of a docstring (one line each)."""
    found = re.findall(r":param (\w+):\s*(.*?)(?=\n\s*:|\n\s*\n|\Z)", doc, flags=re.S)
    return {k: " ".join(v.split()) for k, v in found}


def _check_meanings(name: str, new: dict[str, Option]) -> None:
    """A flag shared with an already registered model must have the same type there."""
    for other, cls in REGISTRY.items():
        if other == name:
            continue
        for key, opt in options(cls).items():
            mine = new.get(key)
            if mine is not None and mine.flag and opt.flag and mine.meaning != opt.meaning:
                raise ModelError(
                    f"register({name!r}): option {key!r} means {mine.meaning} here but "
                    f"{opt.meaning} for {other!r}: give it the same type or another name"
                )
