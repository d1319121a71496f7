"""The routing core: what a trace is, how it is captured, written, resumed and cached.

- ``schema``: the trace's dims, variables, dtypes and the checks every trace passes.
- ``capture``: hooks on a model's real routers and experts; one record per forward.
- ``traces``: a model run over texts in batches, streamed into a trace.
- ``trace_store``: Zarr stores written atomically and resumed after a crash.
- ``cache``: content-addressed stores under data-cache/, keyed by what made them.

The core knows models (their family table) but nothing of training, analyses or the site.
"""
