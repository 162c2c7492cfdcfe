"""Active learning of structure-property relations (issue #12): deep kernel learning models
(:mod:`xsi_dask.active.model`) and acquisition functions on a finite candidate set
(:mod:`xsi_dask.active.acquisition`).

Needs the optional ``active`` extra (torch, GPyTorch, BoTorch). Nothing is imported here, so that
``import xsi_dask.active`` works without it; import the modules themselves.
"""
