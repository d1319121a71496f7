"""moe_lib: capture, cache and analyse expert routing in Mixture-of-Experts language models.

The names most sessions need::

    model, tokenizer = moe_lib.load("olmoe-1b-7b", device="cuda")
    with moe_lib.capture(model) as cap:      # hooks on the real routers
        model(**batch)
        record = cap.pop()
    ds = moe_lib.collect_trace(model, tokenizer, texts)   # an xarray.Dataset
    with moe_lib.ablate(model, layers="last:2", slots=[0]):  # remove each token's top-1
        model(**batch)
"""

__version__ = "0.1.0"

# The package's flow, one folder a step (README, "Architecture"): models -> core (capture,
# trace, cache) -> analysis | interventions | training -> plots -> site -> commands.
from moe_lib.core.capture import capture  # noqa: E402
from moe_lib.core.trace_store import open_trace  # noqa: E402
from moe_lib.core.traces import collect_trace  # noqa: E402
from moe_lib.interventions.removal import ablate  # noqa: E402
from moe_lib.models.registry import load  # noqa: E402

__all__ = ["ablate", "capture", "collect_trace", "load", "open_trace", "__version__"]
