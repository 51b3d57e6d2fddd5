"""`sync`: manifest -> sealed snapshot, and the uv subprocess it drives.

Empty on purpose: importing a module of this folder must not import its siblings."""
