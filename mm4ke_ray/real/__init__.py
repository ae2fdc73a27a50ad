"""Real pretrained models that can be had offline (e.g. SmolLM2-135M-Instruct from a PyPI wheel)."""
