"""Benchmarks of the gateway against its direct upstream and its peers: see bench/run.py."""
