"""rgmobile exporter: RecurrentGemma (Griffin) with explicit state, for phones."""

__version__ = "0.1.0"
