"""Push and pull of sealed snapshots through object storage, signed.

Empty on purpose: importing a module of this folder must not import its siblings."""
