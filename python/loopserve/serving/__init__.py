"""The engine side: model versions behind their batchers, the repository that loads and swaps them,
the router, registry following, and the per-version services (drift, feedback)."""
