"""mm4ke-ray: knowledge editing by Robust SFT + model merging, swept with Ray Tune.

Flow: config → data → rsft → merge → evaluate → search → tracking → export, commands on top
(`tests/test_architecture.py` keeps the imports free of cycles; README "Layout").
"""

__version__ = "0.1.0"
