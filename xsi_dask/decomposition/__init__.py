"""Decompositions of a montage: Poisson-scaled SVD (:func:`decompose`), NMF (:func:`nmf`, optionally with known
endmember spectra), and analyses of their maps: independent components (:func:`ica`) and k-means segmentation
(:func:`segment`)."""

from ._fixed import place_references, reference_spectra
from ._ica import ica
from ._nmf import nmf
from ._reconstruct import reconstruct, region_spectrum
from ._segment import segment
from ._svd import decompose

__all__ = ["decompose", "ica", "nmf", "place_references", "reconstruct", "reference_spectra", "region_spectrum", "segment"]
