"""The seed model/guide pairs, one file each.

:data:`REGISTRY` maps a CLI name to the class. A class there has ``from_data(data, **options)``
(build for a :class:`pyro_vi.data.Dataset`, ignoring options it does not use), a ``config`` dict
(the constructor's keyword arguments, so a run can rebuild it), ``check(x)`` (one-line errors for
data it cannot take) and the methods ``model`` and ``guide``.
"""

from .cvae import CVAE
from .flow_density import FlowDensity
from .gmm import GMM
from .mdn import MDN
from .text_vae import LanguageModel, TextVAE
from .vae import VAE

# CLI names; GMM is fitted through its own estimator
REGISTRY = {"vae": VAE, "cvae": CVAE, "mdn": MDN, "text-vae": TextVAE, "text-lm": LanguageModel}

__all__ = ["REGISTRY", "VAE", "CVAE", "GMM", "FlowDensity", "MDN", "TextVAE", "LanguageModel"]
