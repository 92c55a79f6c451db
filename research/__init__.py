"""Research and exploration scripts: not part of the shipped package (see research/README.md)."""
