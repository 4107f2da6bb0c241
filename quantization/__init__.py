"""Quantization: recipes as data (recipe.py, recipes/*.json), tensor maths (tensor.py),
the quantized eager reference (reference.py), and per-format application."""
