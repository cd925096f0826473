"""Default mappings for the bundled adapters."""
