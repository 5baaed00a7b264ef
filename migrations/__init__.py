"""Database shape of fleetstream: versioned and repeatable SQL plus their runner."""
