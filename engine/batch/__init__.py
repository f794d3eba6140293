"""Orchestration: the two passes and the cohort fit as a Dask graph, where tasks run, CPU or GPU."""
