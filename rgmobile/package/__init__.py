"""Phone bundles: an artifact plus its selftest, checked by running the runtime."""
