"""healerd benchmarks (not part of the test suite): `python -m bench` or `make bench`; two revisions side by
side: `python -m bench.compare` or `make bench-compare`."""
