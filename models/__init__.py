"""The seed model/guide pairs, one file each.

The classes that ``pyro-vi fit NAME`` knows register themselves with one line,
``@register(NAME)`` (:func:`pyro_vi.protocol.register`); what a registered class provides is
:class:`pyro_vi.protocol.Model`. :data:`REGISTRY` maps each CLI name to its class: ``vae``,
``hvae``,
``cvae``, ``mdn``, ``text-vae``, ``text-lm``. GMM is fitted through its own estimator, FlowDensity
from Python.
"""

from pyro_vi.protocol import REGISTRY

from .cvae import CVAE
from .flow_density import FlowDensity
from .gmm_estimator import GMM
from .hvae import HVAE
from .mdn import MDN
from .text_vae import LanguageModel, TextVAE
from .vae import VAE

__all__ = [
    "REGISTRY",
    "VAE",
    "HVAE",
    "CVAE",
    "GMM",
    "FlowDensity",
    "MDN",
    "TextVAE",
    "LanguageModel",
]
