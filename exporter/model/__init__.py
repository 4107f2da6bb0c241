"""The explicit-state Griffin: config -> model -> (logits, state)."""
