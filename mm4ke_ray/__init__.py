"""mm4ke-ray: knowledge editing by Robust SFT + model merging, swept with Ray Tune."""

__version__ = "0.1.0"
