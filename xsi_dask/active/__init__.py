"""Active learning of structure-property relations (deep kernel learning, issue #12).

A structural image (or a montage's reduced features) describes every candidate
pixel (:mod:`xsi_dask.active.features`); a model learns features -> scalar from
the few pixels measured so far and an acquisition function picks the next one
(:mod:`xsi_dask.active.loop`). Method: Roccapriore, Ziatdinov & Kalinin, Adv.
Sci. 9, 2203422 (2022), doi:10.1002/advs.202203422.
"""
