"""Managed API keys: records with a per-key policy, two stores, a lookup cache, limits, budgets."""
