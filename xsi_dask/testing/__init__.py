"""Simulated montages with ground truth (:mod:`xsi_dask.testing.simulate`)."""
