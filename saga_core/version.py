"""The version of saga-core (also ``saga_core.__version__``)."""

VERSION = "0.1.0"
