"""Analyses of routing traces, one module per question; pure functions, tidy tables out.

- ``distribution``: weight by slot, expert load and balance, router entropy, adjacent tokens.
- ``saturation``: router saturation through training, token distributions per checkpoint.
- ``crosslayer``: polysemantic tokens across layers (flow, JS specialization, continuity).
- ``paths``: routes over windows of layers, path groups, coverage, meaning from paths.
- ``route_clusters``: HDBSCAN clusters of routes against labels (adjusted mutual information).
- ``specialization``: domain and vocabulary specialization, characteristic tokens, co-activation.
- ``ablation``: scoring (answer letters, next-token loss) under expert ablations, the reusing grid.
- ``lens``: the logit lens over every layer's residual stream, baseline and ablated.
- ``ablation_runs``: the samples, grid and lens tables of one model, keyed and cached.
"""
