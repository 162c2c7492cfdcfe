"""Decompositions of a montage: Poisson-scaled SVD (:func:`decompose`), NMF (:func:`nmf`), and of a stored SVD:
the spatial-simplicity rotation (:func:`rotate`) and factored MCR-ALS (:func:`mcr`)."""

from ._mcr import mcr
from ._nmf import nmf
from ._reconstruct import reconstruct, region_spectrum
from ._rotate import rotate
from ._svd import decompose

__all__ = ["decompose", "mcr", "nmf", "reconstruct", "region_spectrum", "rotate"]
