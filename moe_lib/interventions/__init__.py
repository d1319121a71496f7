"""Analyses that run a model and change its forward: expert removal, the ablation grid, the lens.

- ``removal``: ``ablate``, a context manager that removes experts or ranks from the real
  forward (through the experts module's arguments, never a re-implemented layer).
- ``ablation``: scoring (answer letters, next-token loss) under a grid of ablations that
  reuses the unchanged prefix of the model.
- ``lens``: the logit lens over every layer's residual stream, baseline and ablated.
- ``ablation_runs``: the samples, grid and lens tables of one model, keyed and cached.

Pure functions over traces live in ``moe_lib.analysis``; these need the model itself.
"""
