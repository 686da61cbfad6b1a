"""Benchmarks of the gateway against its direct upstream and LiteLLM: see bench/run.py."""
