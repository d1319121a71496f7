"""Training the project's own MoEs and tracing their checkpoints.

- ``training_data``: the corpus read, tokenized and cut into blocks; the held-out probes.
- ``train``: the seeded, checkpointed, resumable training loop of both recipes.
- ``probe_traces``: every checkpoint traced on the fixed probe sets, through the cache.
- ``run_report``: a finished run against the n-gram baselines on the same held-out text.

The recipes themselves (``models.standard``, ``models.cross_layer``) and the checkpoint
format (``models.checkpoints``) live in ``models``: the registry loads them without training.
"""
