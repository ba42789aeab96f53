"""healerd benchmarks (not part of the test suite): `python -m bench` or `make bench`."""
