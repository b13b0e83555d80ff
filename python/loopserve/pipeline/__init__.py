"""Continuous training: triggers decide when, the pipeline retrains, gates, canaries and
promotes or rolls back, in its own process, with every step recorded.

    loopserve pipeline watch pipeline.yaml     # read the server, run when a trigger fires
    loopserve pipeline run pipeline.yaml       # once, now
    loopserve pipeline status                  # where each run is
"""
