"""Models: the family table, the registry, tiny test models and the project's own recipes.

Importing this package registers the cross-layer recipe's ``model_type="moe_crosslayer"``
with transformers' Auto classes, so its saved checkpoints load like any other.
"""

from moe_lib.models import cross_layer  # noqa: F401  (registers moe_crosslayer)
