"""volenv: sealed, versioned Python environments on a shared network volume.

Kept import-free on purpose: `volenv run` is a container entrypoint and every import
here would be paid on each cold start.
"""

__version__ = "0.1.0"
