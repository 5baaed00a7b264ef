"""Stream processors: clean raw platform records into typed clean topics."""
