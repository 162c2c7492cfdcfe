"""Active learning: deep kernel learning (DKL) that chooses where to measure next (issue #12).

Structure first, spectra where they matter: features per pixel (patches of the
structural image, or the reduced features of a survey decomposition) feed a
DKL model; an acquisition function over its prediction and uncertainty picks
the next pixel; a *scalarizer* turns that pixel's spectrum or diffraction
pattern into the learned scalar property.

Modules (work in progress; some land on other branches):

* :mod:`xsi_dask.active.scalarizers` -- the physics: band means and integrals
  (optionally power-law background subtracted), band ratios, peak position and
  height, NMF abundance, 4D-STEM centre of mass and virtual detectors, and the
  parser of the CLI's compact ``--scalarizer`` spec.

Method: Roccapriore, K. M., Kalinin, S. V. & Ziatdinov, M. (2022). Physics
discovery in nanoplasmonic systems via autonomous experiments in scanning
transmission electron microscopy. Adv. Sci. 9, 2203422,
https://doi.org/10.1002/advs.202203422 (PMC9798976).

This package imports no torch: the model lives in its own module, imported
only where it is used.
"""
