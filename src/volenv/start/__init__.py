"""What `volenv run` does: activation (the container's fast path), materialization to local disk,
models' local copies, start traces.

Empty on purpose: importing a module of this folder must not import its siblings."""
