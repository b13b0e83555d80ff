"""Statistical health of served models: drift statistics over streaming sketches.

Groundwork for the drift monitor: the statistics are here, the reference profiles, windows,
verdicts and the server wiring come next.
"""
