"""Decompositions of a montage: Poisson-scaled SVD (:func:`decompose`) and NMF (:func:`nmf`)."""

from ._nmf import nmf
from ._reconstruct import reconstruct, region_spectrum
from ._svd import decompose

__all__ = ["decompose", "nmf", "reconstruct", "region_spectrum"]
