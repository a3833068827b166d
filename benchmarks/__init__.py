"""The performance figures P1-P7 (README "Performance"): `python3 dev.py bench` or `make bench`; see benchmarks/cli.py."""
