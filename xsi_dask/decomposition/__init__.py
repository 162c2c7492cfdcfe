"""Decompositions of a montage: Poisson-scaled SVD (:func:`decompose`), NMF (:func:`nmf`), and analyses of their
maps: independent components (:func:`ica`) and k-means segmentation (:func:`segment`)."""

from ._ica import ica
from ._nmf import nmf
from ._reconstruct import reconstruct, region_spectrum
from ._segment import segment
from ._svd import decompose

__all__ = ["decompose", "ica", "nmf", "reconstruct", "region_spectrum", "segment"]
