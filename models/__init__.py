"""The seed model/guide pairs, one file each.

The classes that ``pyro-vi fit NAME`` knows register themselves with one line,
``@register(NAME)`` (:func:`pyro_vi.protocol.register`); what a registered class provides is
:class:`pyro_vi.protocol.Model`. :data:`REGISTRY` maps each CLI name to its class: ``vae``,
``hvae``,
``cvae``, ``mdn``, ``gmm`` (:class:`~.gmm_pair.GMMPair`; in Python :class:`GMM` is its
scikit-learn estimator), ``nice``, ``realnvp`` (:class:`NICEDensity`, :class:`RealNVPDensity`: a
:class:`FlowDensity` built from options), ``text-vae``, ``text-lm``.
"""

from pyro_vi.protocol import REGISTRY

from .cvae import CVAE
from .flow_density import FlowDensity, NICEDensity, RealNVPDensity
from .gmm_estimator import GMM
from .gmm_pair import GMMPair
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
    "GMMPair",
    "FlowDensity",
    "NICEDensity",
    "RealNVPDensity",
    "MDN",
    "TextVAE",
    "LanguageModel",
]
