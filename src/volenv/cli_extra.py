"""Commands beyond the foundation (verify, ...), registered on the same typer app."""

from __future__ import annotations
