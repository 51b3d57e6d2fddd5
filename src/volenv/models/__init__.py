"""Model caches on the volume: fetch, record, verify.

Empty on purpose: importing a module of this folder must not import its siblings."""
