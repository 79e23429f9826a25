"""mechcheck: causal tests of how a language model reports on its own neurons."""

__version__ = "0.1.0"
