"""Triton GPU kernels (drift histograms, moments) arrive with the drift issue."""
