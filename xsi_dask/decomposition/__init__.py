"""Decompositions of a montage: Poisson-scaled SVD (:func:`decompose`), NMF (:func:`nmf`, optionally with known
endmember spectra), and analyses of the SVD's stored maps: the spatial-simplicity rotation (:func:`rotate`),
factored MCR-ALS (:func:`mcr`), independent components (:func:`ica`) and k-means segmentation (:func:`segment`)."""

from ._fixed import place_references, reference_spectra
from ._ica import ica
from ._mcr import mcr
from ._nmf import nmf
from ._reconstruct import reconstruct, region_spectrum
from ._rotate import rotate
from ._segment import segment
from ._svd import decompose

__all__ = ["decompose", "ica", "mcr", "nmf", "place_references", "reconstruct", "reference_spectra", "region_spectrum",
           "rotate", "segment"]
