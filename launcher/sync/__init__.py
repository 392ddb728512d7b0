"""The job's workdir, apart from its image: what belongs to it (`.launchignore`), its content hash,
and keeping an exact copy of it on every host, sending only what changed."""
