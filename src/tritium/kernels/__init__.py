"""Triton kernels and their launchers. Autograd and dispatch live in ``tritium.ops``."""
