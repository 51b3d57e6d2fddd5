"""The command line: global options, the typer app, the renderer.

Empty on purpose: importing a module of this folder must not import its siblings."""
