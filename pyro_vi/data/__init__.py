"""Data sets as device-resident tensors, batched by index: the first stage of the path.

:func:`load` reads a named set or a file (:mod:`~pyro_vi.data.loaders`) into a :class:`Dataset` of
three :class:`Split` s (:mod:`~pyro_vi.data.split`); sentences become padded token ids
(:mod:`~pyro_vi.data.corpus`); :func:`missing` says why a set is not on this machine
(:mod:`~pyro_vi.data.machine`).
"""

from .corpus import Vocabulary, load_corpus, sentence_mask, tokenize
from .loaders import FILE_SUFFIXES, IMAGE_SETS, NAMES, load
from .machine import DEBIAN_PACKAGES, debian_fashion, missing, system_data, wordnet_dir
from .split import Batch, DataError, Dataset, Split, data_plate, trim_rows

__all__ = ["Batch", "Dataset", "Split", "DataError", "load", "data_plate", "missing", "NAMES",
           "IMAGE_SETS", "FILE_SUFFIXES", "DEBIAN_PACKAGES", "debian_fashion", "system_data",
           "wordnet_dir", "Vocabulary", "load_corpus", "sentence_mask", "tokenize",
           "trim_rows"]  # fmt: skip
