"""lana: latency-aware network acceleration."""
__version__ = "0.1.0"
