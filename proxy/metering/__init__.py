"""Tokens, costs and counts: Prometheus metrics, prices, and the end-of-run report."""
