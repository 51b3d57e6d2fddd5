"""What every part uses and that knows nothing of the volume: typed errors, redaction, stderr narrative,
fault points, lean JSON, `${NAME}` expansion, the parallel I/O pool.

Empty on purpose: importing a module of this folder must not import its siblings."""
