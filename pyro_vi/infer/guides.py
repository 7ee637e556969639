r"""Per-datapoint, test-time and semi-amortized variational families for local latents.

The amortized guide of a VAE is one network :math:`q_\phi(z \mid x)`; the per-datapoint family
gives every datapoint its own variational parameters :math:`\lambda_i = (\mu_i, \log\sigma_i)`,

.. math:: q_{\lambda_i}(z_i) = \mathcal N(\mu_i, \mathrm{diag}\,\sigma_i^2)
          \quad\text{(pushed through } \mathrm{biject\_to}(\mathrm{supp}\,z_i)
          \text{ for a constrained site)},

so the full-data ELBO :math:`\sum_i \mathcal L_i(\theta, \lambda_i)` decomposes over datapoints
and the batch estimate :math:`\frac NB \sum_{i \in \text{batch}} \mathcal L_i` is unbiased. Every
latent site of the model that lives in ``pyro.plate("data", N, subsample=idx)`` gets two tables
of N rows, read at the batch's dataset indices with ``F.embedding(idx, table, sparse=True)``:
gradients are sparse, :func:`pyro_vi.fit` steps them with torch's SparseAdam (lazy Adam), and
rows outside the batch keep their values and their Adam moments.

* :class:`PerDatapointGuide` discovers the local sites (names, shapes, supports) by tracing the
  model once, like Pyro's autoguides, and works with :func:`pyro_vi.fit` and any Pyro ELBO.
* :func:`fit_local` is test-time inference: for new x, fit a fresh per-datapoint q with the model
  frozen (at test time q is fitted, not the model), optionally started from an amortized guide.
* :class:`SemiAmortizedELBO` (Kim et al. 2018): the encoder proposes :math:`\lambda^{(0)}`, K Adam
  steps on the batch ELBO refine it to :math:`\lambda^{(K)}`, then the model is trained on the
  ELBO at :math:`\lambda^{(K)}` and the encoder on its own ELBO at :math:`\lambda^{(0)}` (stop-
  gradient variant: no gradient flows through the refinement steps).

Example::

    guide = PerDatapointGuide(model, size=len(data.train))
    fit(model, guide, data.train, epochs=50, batch_size=100, lr=0.05)
    q = guide.params("z")                     # {"loc": (N, D), "scale": (N, D)}

    local = fit_local(vae.model, x_test, init=vae.guide, steps=300)   # model frozen
    elbo(vae.model, local, x_test, num_particles=100)

    fit(vae.model, vae.guide, data, loss=SemiAmortizedELBO(steps=5))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import site_is_subsample

from pyro_vi.data import data_plate

__all__ = [
    "GuideError",
    "LocalSite",
    "PerDatapointGuide",
    "SemiAmortizedELBO",
    "fit_local",
    "guide_normal_params",
    "local_sites",
    "refine",
    "TensorGuide",
]


class GuideError(ValueError):
    """A guide cannot be built or used for this model/data; the message names the fix."""


@dataclass(frozen=True)
class LocalSite:
    """One local latent site: its per-datapoint shape, support and the bijection to it."""

    name: str
    shape: torch.Size  # per datapoint, constrained
    unconstrained_shape: torch.Size  # per datapoint, where the Gaussian lives
    support: dist.constraints.Constraint
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        return math.prod(self.unconstrained_shape)

    @property
    def is_real(self) -> bool:
        return _is_real(self.support)


def _is_real(support) -> bool:
    while isinstance(support, dist.constraints.independent):
        support = support.base_constraint
    return support is dist.constraints.real


def _trace_model(model: Callable, x: torch.Tensor, **kwargs) -> pyro.poutine.Trace:
    with torch.no_grad(), poutine.block():
        return poutine.trace(model).get_trace(x, **kwargs)


def local_sites(
    model: Callable, x: torch.Tensor, sites: list[str] | None = None, **kwargs
) -> dict[str, LocalSite]:
    """Trace ``model(x, **kwargs)`` once and describe its latent sites in the ``"data"`` plate.

    Raises :class:`GuideError` (one line) for a model without a ``"data"`` plate, a latent site
    outside it, a discrete site, or a site with plates other than ``"data"``.
    """
    trace = _trace_model(model, x, **kwargs)
    latent = {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        and (sites is None or name in sites)
    }  # fmt: skip
    if sites is not None and set(sites) - set(latent):
        raise GuideError(
            f"sites {sorted(set(sites) - set(latent))} are not latent sites of the model: "
            f"choose among {sorted(latent)}"
        )
    has_plate = any(
        f.name == "data"
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for f in site["cond_indep_stack"]
    )
    if not has_plate:
        raise GuideError(
            "the model has no plate named 'data': put its local latents and observations in "
            "pyro_vi.data.data_plate(x, idx, size)"
        )
    out: dict[str, LocalSite] = {}
    for name, site in latent.items():
        fn = site["fn"]
        frames = [f for f in site["cond_indep_stack"] if f.vectorized]
        frame = next((f for f in frames if f.name == "data"), None)
        if frame is None:
            raise GuideError(
                f"latent site {name!r} is not in the 'data' plate (a global latent): pass "
                "sites=[...local names...] and give the globals a guide of their own"
            )
        if fn.support.is_discrete:
            raise GuideError(
                f"latent site {name!r} is discrete ({type(fn).__name__}): a Gaussian "
                "per-datapoint guide needs continuous latents; enumerate it with TraceEnum_ELBO "
                "or leave it out with sites=[...]"
            )
        batch = tuple(fn.batch_shape)
        if len(frames) > 1 or frame.dim != -1 or math.prod(batch[:-1]) != 1:
            raise GuideError(
                f"latent site {name!r} has batch shape {batch} (plates "
                f"{[f.name for f in frames]}): the per-datapoint guide needs 'data' as the "
                "site's only plate, at dim -1; move other dimensions into the event (to_event)"
            )
        value_shape = torch.Size((x.shape[0],) + tuple(fn.event_shape))
        transform = biject_to(fn.support)
        try:
            unconstrained = transform.inv.forward_shape(value_shape)
        except (NotImplementedError, AttributeError) as e:
            raise GuideError(
                f"latent site {name!r}: no bijection to its support {fn.support} is known: "
                "reparameterize the site onto the real line"
            ) from e
        out[name] = LocalSite(
            name, torch.Size(fn.event_shape), torch.Size(unconstrained[1:]), fn.support,
            site["value"].dtype,
        )  # fmt: skip
    if not out:
        raise GuideError("the model has no latent sites in the 'data' plate: nothing to guide")
    return out


def _indices(x: torch.Tensor, idx: torch.Tensor | None, size: int) -> torch.Tensor:
    if idx is None:
        if x.shape[0] != size:
            raise GuideError(
                f"{x.shape[0]} rows without idx for a table of {size} rows: pass idx= (the "
                "dataset indices of the rows) or build the guide with size=len(x)"
            )
        return torch.arange(size, device=x.device)
    idx = torch.as_tensor(idx, device=x.device)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise GuideError(
            f"indices in [{int(idx.min())}, {int(idx.max())}] are outside the table of {size} "
            "rows: build the guide with size= the number of datapoints"
        )
    return idx.long()


class PerDatapointGuide:
    r"""A diagonal Gaussian :math:`q(z_i) = \mathcal N(\mu_i, \sigma_i^2)` per datapoint and site.

    Args:
        model: the model, called as ``model(x, idx=idx, size=size, **kw)``; its local latents
            live in ``pyro.plate("data", size, subsample=idx)``.
        size: number of datapoints N (rows of each table).
        sites: local site names to guide (default: every latent site of the model).
        init_loc: initial mean in unconstrained space, a float or a tensor of shape
            (N, *site_shape) (a dict ``{site: tensor}`` for several sites).
        init_scale: initial standard deviation (float or tensors, like ``init_loc``).
        name: prefix of the parameter names ``{name}.{site}.loc`` / ``.log_scale``.
        sparse: read tables with sparse gradients (lazy Adam in :func:`pyro_vi.fit`); set False
            for optimizers that need dense gradients.

    The tables are created on the first call, on the data's device, after tracing the model
    once to discover its local sites.
    """

    def __init__(
        self,
        model: Callable,
        size: int,
        *,
        sites: list[str] | None = None,
        init_loc: float | torch.Tensor | dict[str, torch.Tensor] = 0.0,
        init_scale: float | torch.Tensor | dict[str, torch.Tensor] = 0.1,
        name: str = "local",
        sparse: bool = True,
    ):
        if not isinstance(size, int) or size < 1:
            raise GuideError(f"size={size!r}: pass the number of datapoints, a whole number > 0")
        self.model, self.size, self.name, self.sparse = model, size, name, sparse
        self.site_names = sites
        self.init_loc, self.init_scale = init_loc, init_scale
        self.sites: dict[str, LocalSite] | None = None

    def __repr__(self) -> str:
        return f"PerDatapointGuide(size={self.size}, sites={list(self.sites or [])})"

    def _setup(self, x: torch.Tensor, kwargs: dict) -> None:
        self.sites = local_sites(self.model, x, self.site_names, **kwargs)

    def _init(self, value, site: LocalSite, x: torch.Tensor, log: bool) -> torch.Tensor:
        if isinstance(value, dict):
            value = value[site.name]
        shape = (self.size, site.numel)
        if torch.is_tensor(value):
            t = value.detach().to(device=x.device, dtype=site.dtype).reshape(shape).clone()
            return t.log() if log else t
        v = math.log(value) if log else float(value)
        return torch.full(shape, v, device=x.device, dtype=site.dtype)

    def tables(self, site: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (loc, log_scale) parameter tables of ``site``, each of shape (N, numel)."""
        s = self.sites[site]
        store = pyro.get_param_store()
        return (
            store.get_param(f"{self.name}.{s.name}.loc"),
            store.get_param(f"{self.name}.{s.name}.log_scale"),
        )

    @torch.no_grad()
    def params(self, site: str) -> dict[str, torch.Tensor]:
        """``{"loc", "scale"}`` of ``site`` for all N datapoints, shape (N, *unconstrained)."""
        if self.sites is None or site not in self.sites:
            raise GuideError(f"unknown site {site!r}: call the guide once, then ask for a site")
        loc, log_scale = self.tables(site)
        shape = (self.size, *self.sites[site].unconstrained_shape)
        return {
            "loc": loc.detach().reshape(shape),
            "scale": log_scale.detach().exp().reshape(shape),
        }

    def distribution(
        self, site: LocalSite, loc: torch.Tensor, log_scale: torch.Tensor
    ) -> dist.Distribution:
        """q of one site for rows with flat parameters ``loc``/``log_scale`` of shape (B, numel)."""
        shape = (loc.shape[0], *site.unconstrained_shape)
        base = dist.Normal(loc.reshape(shape), log_scale.exp().reshape(shape))
        base = base.to_event(len(site.unconstrained_shape))
        if site.is_real:
            return base
        return dist.TransformedDistribution(base, biject_to(site.support))

    def __call__(
        self, x: torch.Tensor, idx: torch.Tensor | None = None, size: int | None = None, **kwargs
    ) -> dict[str, torch.Tensor]:
        if size is not None and size != self.size:
            raise GuideError(
                f"data of {size} rows for a table of {self.size}: build the guide with size={size}"
            )
        if self.sites is None:
            self._setup(x, dict(idx=idx, size=size, **kwargs))
        i = _indices(x, idx, self.size)
        out = {}
        with data_plate(x, idx, size):
            for site in self.sites.values():
                loc_t = pyro.param(
                    f"{self.name}.{site.name}.loc",
                    lambda s=site: self._init(self.init_loc, s, x, log=False),
                )
                ls_t = pyro.param(
                    f"{self.name}.{site.name}.log_scale",
                    lambda s=site: self._init(self.init_scale, s, x, log=True),
                )
                loc = F.embedding(i, loc_t, sparse=self.sparse)
                log_scale = F.embedding(i, ls_t, sparse=self.sparse)
                out[site.name] = pyro.sample(site.name, self.distribution(site, loc, log_scale))
        return out


def _unwrap(fn: dist.Distribution) -> dist.Distribution:
    while isinstance(fn, (dist.Independent, torch.distributions.Independent)):
        fn = fn.base_dist
    return fn


def guide_normal_params(
    guide: Callable, x: torch.Tensor, sites: dict[str, LocalSite] | None = None, **kwargs
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(loc, log_scale) per datapoint, shape (B, numel), of each Normal site of ``guide(x)``.

    Keeps the autograd graph (so an encoder can be trained through them). Sites whose guide
    distribution is not a (possibly Independent) Normal raise :class:`GuideError`.
    """
    with poutine.block():
        trace = poutine.trace(guide).get_trace(x, **kwargs)
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if sites is not None and name not in sites:
            continue
        base = _unwrap(site["fn"])
        if not isinstance(base, torch.distributions.Normal):
            raise GuideError(
                f"guide site {name!r} is {type(base).__name__}, not Normal: start local "
                "inference from init_loc/init_scale instead of the guide"
            )
        loc = base.loc.expand(base.batch_shape).reshape(x.shape[0], -1)
        log_scale = base.scale.expand(base.batch_shape).log().reshape(x.shape[0], -1)
        out[name] = (loc, log_scale)
    return out


class TensorGuide:
    """The per-datapoint Gaussian guide of ``family`` over given parameter tensors: ``params``
    maps each local site to its ``(loc, log_scale)``, each (B, numel) for the B rows of a batch.
    This is the guide :func:`refine` steps and the one to score refined parameters with::

        family, lam0, lamk = SemiAmortizedELBO(steps=20).refine(vae.model, vae.guide, x)
        elbo(vae.model, TensorGuide(family, lamk), x, num_particles=200)
    """

    def __init__(self, family: PerDatapointGuide, params: dict):
        self.family, self.params = family, params

    def __call__(self, x, idx=None, size=None, **kwargs):
        with data_plate(x, idx, size):
            for name, (loc, log_scale) in self.params.items():
                site = self.family.sites[name]
                pyro.sample(name, self.family.distribution(site, loc, log_scale))


def _elbo_loss(num_particles: int) -> pyro.infer.Trace_ELBO:
    # one particle needs no particle plate; several are vectorized (Pyro finds the nesting)
    return pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)


def refine(
    model: Callable,
    family: PerDatapointGuide,
    params: dict[str, tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    *,
    steps: int,
    lr: float = 0.01,
    num_particles: int = 1,
    first_grad: bool = False,
    **kwargs,
):
    r"""``steps`` gradient steps on each datapoint's own ELBO :math:`\mathcal L_i(\lambda_i)`.

    ``params`` maps site → (loc, log_scale) of shape (B, numel); they are detached first and the
    refined, detached values are returned. The ELBO is estimated with ``num_particles``
    reparameterized particles and the KL in closed form where Pyro knows it
    (TraceMeanField_ELBO), which removes the noise of latent dimensions the likelihood ignores.

    The steps are elementwise Adam (rate ``lr``, fresh moments), so rows are independent
    problems solved side by side and each coordinate moves by about ``lr`` per step; the
    subsampling scale ``size / B`` is divided out. With ``first_grad`` also returns the gradient
    of :math:`-\mathcal L_i` at the start (what an encoder trained on its own ELBO needs).
    """
    if steps < 0:
        raise GuideError(f"steps={steps}: use a whole number >= 0")
    lam = [t.detach().clone().requires_grad_(True) for pair in params.values() for t in pair]
    names = list(params)
    m = [torch.zeros_like(t) for t in lam]
    v = [torch.zeros_like(t) for t in lam]
    betas, eps = (0.9, 0.999), 1e-8
    b = x.shape[0]
    scale = kwargs["size"] / b if kwargs.get("idx") is not None and kwargs.get("size") else 1.0
    loss_fn = pyro.infer.TraceMeanField_ELBO(
        num_particles=num_particles, vectorize_particles=num_particles > 1
    )
    grad0 = None
    for k in range(steps):
        current = {n: (lam[2 * j], lam[2 * j + 1]) for j, n in enumerate(names)}
        with poutine.block():
            loss = loss_fn.differentiable_loss(model, TensorGuide(family, current), x, **kwargs)
        grads = [g / scale for g in torch.autograd.grad(loss, lam)]
        with torch.no_grad():
            if k == 0:
                grad0 = grads
            for j, (p, g) in enumerate(zip(lam, grads, strict=True)):
                m[j].mul_(betas[0]).add_(g, alpha=1 - betas[0])
                v[j].mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
                mh = m[j] / (1 - betas[0] ** (k + 1))
                vh = v[j] / (1 - betas[1] ** (k + 1))
                p.sub_(lr * mh / (vh.sqrt() + eps))
    out = {n: (lam[2 * j].detach(), lam[2 * j + 1].detach()) for j, n in enumerate(names)}
    if first_grad:
        g0 = None
        if grad0 is not None:
            g0 = {n: (grad0[2 * j], grad0[2 * j + 1]) for j, n in enumerate(names)}
        return out, g0
    return out


def fit_local(
    model: Callable,
    x: torch.Tensor,
    *,
    init: Callable | None = None,
    steps: int = 500,
    lr: float = 0.01,
    num_particles: int = 1,
    init_loc: float = 0.0,
    init_scale: float = 0.1,
    name: str = "test_local",
    seed: int | None = 0,
    history: list | None = None,
    **kwargs,
) -> PerDatapointGuide:
    r"""Test-time inference: fit a fresh per-datapoint q to new ``x`` with the model frozen.

    Maximizes :math:`\sum_i \mathcal L_i(\theta, \lambda_i)` over the :math:`\lambda_i` only
    (the model's parameters do not move and get no gradient), by ``steps`` full-batch Adam steps
    with ``num_particles`` reparameterized particles. ``init``, an amortized guide whose sites
    are Normal (e.g. ``vae.guide``), gives the starting point :math:`\lambda_i^{(0)}`; else
    ``init_loc``/``init_scale``. Returns the fitted :class:`PerDatapointGuide` (parameters in
    the param store under ``name``; an existing table of that name is replaced). ``history``, if
    given, receives the batch ELBO per datapoint after every step.
    """
    if steps < 0:
        raise GuideError(f"steps={steps}: use a whole number >= 0")
    store = pyro.get_param_store()
    for key in [k for k in store.keys() if k.startswith(name + ".")]:
        del store[key]
    init_l, init_s = init_loc, init_scale
    if init is not None:
        with torch.no_grad():
            start = guide_normal_params(init, x, **kwargs)
        init_l = {n: loc for n, (loc, _) in start.items()}
        init_s = {n: ls.exp() for n, (_, ls) in start.items()}
    guide = PerDatapointGuide(
        model, x.shape[0], init_loc=init_l, init_scale=init_s, name=name, sparse=False,
        sites=None if init is None else list(init_l),
    )  # fmt: skip
    if seed is not None:
        pyro.set_rng_seed(seed)
    with poutine.block():
        guide(x, **kwargs)  # creates the tables
    tables = [t for s in guide.sites for t in guide.tables(s)]
    opt = torch.optim.Adam(tables, lr=lr)
    loss_fn = _elbo_loss(num_particles)
    for _ in range(steps):
        with poutine.block():
            loss = loss_fn.differentiable_loss(model, guide, x, **kwargs)
        # gradients for the tables only: the model's parameters get none and do not move
        for t, g in zip(tables, torch.autograd.grad(loss, tables), strict=True):
            t.grad = g
        opt.step()
        if history is not None:
            history.append(-loss.item() / x.shape[0])
    return guide


class SemiAmortizedELBO(pyro.infer.ELBO):
    r"""Semi-amortized training (Kim et al. 2018) for a guide whose local sites are Normal.

    Per batch: the amortized guide (encoder) proposes :math:`\lambda^{(0)} = \mathrm{enc}_\phi(x)`;
    ``steps`` = K elementwise Adam steps (rate ``inner_lr``, see :func:`refine`) on each
    datapoint's ELBO, with the model fixed, refine it to :math:`\lambda^{(K)}`. The returned loss
    is the negative ELBO of the model under :math:`q_{\lambda^{(K)}}` (its gradient trains the
    model θ), plus a zero-valued surrogate whose gradient is the encoder's own ELBO gradient
    :math:`(\partial\lambda^{(0)} / \partial\phi)^\top \nabla_\lambda \mathcal L(\theta,
    \lambda^{(0)})` (KL in closed form where known), re-using the first refinement step's
    gradient. This is the **stop-gradient** variant: no gradient flows through the refinement
    (no Hessian-vector products, unlike the full SA-VAE). K=0 is plain
    amortized training. Use with :func:`pyro_vi.fit` as ``loss=SemiAmortizedELBO(steps=K)``;
    :meth:`refined_guide` gives the test-time guide "encoder + K steps".
    """

    def __init__(
        self,
        steps: int = 10,
        inner_lr: float = 0.01,
        num_particles: int = 1,
        inner_particles: int = 1,
    ):
        if not isinstance(steps, int) or steps < 0:
            raise GuideError(f"steps={steps!r}: the number of refinement steps K must be >= 0")
        super().__init__(num_particles=num_particles)
        self.steps, self.inner_lr, self.inner_particles = steps, inner_lr, inner_particles
        self._outer = _elbo_loss(num_particles)
        self._families: dict[Callable, PerDatapointGuide] = {}

    def _family(self, model, x, kwargs) -> PerDatapointGuide:
        fam = self._families.get(model)  # bound methods compare by (self, function)
        if fam is None:
            fam = PerDatapointGuide(model, 1, name="_semi_amortized")
            fam._setup(x, kwargs)
            self._families[model] = fam
        return fam

    def refine(self, model, guide, x, first_grad=False, **kwargs):
        """λ(0) from ``guide`` (with graph) and the refined λ(K) (detached)."""
        fam = self._family(model, x, kwargs)
        lam0 = guide_normal_params(guide, x, fam.sites, **kwargs)
        out = refine(
            model, fam, lam0, x, steps=self.steps, lr=self.inner_lr,
            num_particles=self.inner_particles,
            first_grad=first_grad, **kwargs,
        )  # fmt: skip
        return fam, lam0, out

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        if self.steps == 0:
            return self._outer.differentiable_loss(model, guide, *args, **kwargs)
        x = args[0]
        fam, lam0, (lamk, g0) = self.refine(model, guide, x, first_grad=True, **kwargs)
        loss = self._outer.differentiable_loss(model, TensorGuide(fam, lamk), *args, **kwargs)
        b = x.shape[0]
        scale = kwargs["size"] / b if kwargs.get("idx") is not None and kwargs.get("size") else 1.0
        surrogate = 0.0
        for name, (loc, log_scale) in lam0.items():
            g_loc, g_ls = g0[name]
            # g = d(-ELBO_i)/d(lambda_i); times the batch scale, like the model's loss term
            surrogate = surrogate + scale * ((loc * g_loc).sum() + (log_scale * g_ls).sum())
        return loss + surrogate - surrogate.detach()

    def _get_trace(self, model, guide, args, kwargs):
        return self._outer._get_trace(model, guide, args, kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self._outer.loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()

    def refined_guide(
        self, model: Callable, guide: Callable, x: torch.Tensor, **kwargs
    ) -> Callable:
        """The test-time guide for ``x``: the encoder's proposal refined by the same K steps,
        computed once here and fixed, so every later call (ELBO, IWAE chunks) sees one q."""
        with torch.enable_grad():
            fam, _, lamk = self.refine(model, guide, x, **kwargs)
        return TensorGuide(fam, lamk)
