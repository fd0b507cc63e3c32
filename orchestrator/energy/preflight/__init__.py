"""Preconditions for trustworthy energy: power source, Low Power Mode, a quiet host, thermal state."""
