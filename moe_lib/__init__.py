"""moe_lib: capture, cache and analyse expert routing in Mixture-of-Experts language models."""

__version__ = "0.1.0"
