"""edgecsp: take a trained CSPNet detector to edge devices."""

__version__ = "0.1.0"

from edgecsp.errors import EdgeCSPError


def load(artifact, **runner_options):
    """Open a compiled artifact (directory or .tar.gz) as a predictor; see edgecsp.predictor."""
    from edgecsp.predictor import load as _load

    return _load(artifact, **runner_options)


__all__ = ["EdgeCSPError", "__version__", "load"]
