"""edgecsp: take a trained CSPNet detector to edge devices."""

__version__ = "0.1.0"

from edgecsp.errors import EdgeCSPError

__all__ = ["EdgeCSPError", "__version__"]
