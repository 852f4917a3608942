"""Mini Market seed database generator."""
