"""Garbage collection: a plan from a scan of the volume, then its execution.

Empty on purpose: importing a module of this folder must not import its siblings."""
