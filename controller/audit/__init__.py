"""Compliance tooling over the journal: verify, explain, positions as of, export, fairness."""
