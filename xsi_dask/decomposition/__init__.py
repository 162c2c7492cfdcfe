"""Decompositions of a montage: Poisson-scaled SVD (:func:`decompose`) and NMF (:func:`nmf`)."""

from ._fixed import place_references, reference_spectra
from ._nmf import nmf
from ._reconstruct import reconstruct, region_spectrum
from ._svd import decompose

__all__ = ["decompose", "nmf", "place_references", "reconstruct", "reference_spectra", "region_spectrum"]
