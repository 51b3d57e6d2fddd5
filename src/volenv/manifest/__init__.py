"""The manifest: what an environment is, parsed strictly; no volume access.

Empty on purpose: importing a module of this folder must not import its siblings."""
