"""Active learning: deep kernel learning (DKL) that chooses where to measure next (issue #12, work in progress).

Structure first, spectra where they matter: features per pixel (patches of the
structural image, or the reduced features of a survey decomposition) feed a
DKL model; an acquisition function over its prediction and uncertainty picks
the next pixel; a *scalarizer* turns that pixel's spectrum or diffraction
pattern into the learned scalar property.

Modules:

* :mod:`xsi_dask.active.scalarizers` -- the physics: band means and integrals
  (optionally power-law background subtracted), band ratios, peak position and
  height, NMF abundance, 4D-STEM centre of mass and virtual detectors, and the
  parser of the CLI's compact ``--scalarizer`` spec.
* :mod:`xsi_dask.active.features` -- structural patches (across tile borders on
  a montage), SVD scores / NMF abundances per pixel, both combined.
* :mod:`xsi_dask.active.model` -- the DKL model (MLP embedding feeding an exact
  GPyTorch GP) and the plain GP on coordinates, and ``dkl_factory`` /
  ``plain_gp_factory`` for the loop; needs the ``active`` extra.
* :mod:`xsi_dask.active.acquisition` -- EI, UCB, maximum uncertainty, Thompson
  sampling, the penalty near measured points; ``make_acquisition`` builds them
  (and a random baseline) in the loop's ``(index, values)`` protocol.
* :mod:`xsi_dask.active.loop` -- ``run_experiment``, training on a worker
  offering ``GPU`` when the cluster has one.
* :mod:`xsi_dask.active.measure` -- ``MontageMeasure``: a pre-acquired
  montage as the instrument of a simulated experiment.
* :mod:`xsi_dask.active.explore` -- ``explore``: the simulated experiment of
  ``xsi-dask explore`` on files read by RosettaSciIO or a montage store, with
  a random baseline, the true scalar map and the discovery curve, recorded in
  ``explore.zarr`` (figures and report: :mod:`xsi_dask.plotting.active`).

Method: Roccapriore, K. M., Kalinin, S. V. & Ziatdinov, M. (2022). Physics
discovery in nanoplasmonic systems via autonomous experiments in scanning
transmission electron microscopy. Adv. Sci. 9, 2203422,
https://doi.org/10.1002/advs.202203422 (PMC9798976).

Nothing is imported here, so that ``import xsi_dask.active`` works without
torch; import the modules themselves.
"""
