"""The store on the volume: layout, root discovery, the contained I/O layer, records, seals, pointers,
leases, aliases, stored traces and packs.

Empty on purpose: importing a module of this folder must not import its siblings."""
