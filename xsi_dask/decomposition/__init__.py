"""Decompositions of a montage: Poisson-scaled SVD (:func:`decompose`) and NMF (:func:`nmf`)."""

from ._nmf import nmf
from ._svd import decompose

__all__ = ["decompose", "nmf"]
