"""ISO 8583 gateway with automatic reversal."""

__version__ = "0.1.0"
