"""Analyses of routing traces, one module per question; pure functions, tidy tables out.

- ``distribution``: weight by slot, expert load and balance, router entropy, adjacent tokens.
- ``saturation``: router saturation through training, token distributions per checkpoint.
- ``crosslayer``: polysemantic tokens across layers (flow, JS specialization, continuity).
- ``paths``: routes over windows of layers, path groups, coverage, meaning from paths.
- ``route_clusters``: HDBSCAN clusters of routes against labels (adjusted mutual information).
- ``specialization``: domain and vocabulary specialization, characteristic tokens, co-activation.

Every function here reads traces and returns tables: none loads or runs a model (those
analyses live in ``moe_lib.interventions``).
"""
