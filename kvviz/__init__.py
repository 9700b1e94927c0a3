"""kvviz: see and compare what happens inside the key/value cache of a real language model."""

__version__ = "0.1.0"
