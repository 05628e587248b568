"""The version of cnnvis (read by setup.cfg and recorded with every picture)."""

__version__ = "0.1.0"
