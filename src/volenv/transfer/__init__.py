"""Moving bytes: HTTP range fetches with resume, bucket backends, parallel downloads and uploads.

Empty on purpose: importing a module of this folder must not import its siblings."""
