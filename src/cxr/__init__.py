"""cxr: chest X-ray classification on NIH ChestX-ray14, from raw PNGs to served, explainable models."""

__version__ = "0.1.0"
