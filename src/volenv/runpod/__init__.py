"""RunPod pieces: the one-off provisioning pod and `run --diagnose`'s diagnostic handler.

Empty on purpose: importing a module of this folder must not import its siblings."""
