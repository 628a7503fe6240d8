"""What every stage shares: the params schema, errors, atomic writes, hashing and downloads,
resumable state, the compute device."""
