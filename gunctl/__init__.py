"""gunctl: from raw data to a validated firearm-detection checkpoint."""

__version__ = "0.3.2"
