"""One module per command; each returns a frozen result for the renderer and never sees typer."""
