"""Offline benchmarks that ship with the package (``tritium bench throughput``).

Scripts in the repository's ``benchmarks/`` folder call into these modules, so the installed CLI
and the scripts run the same code. Peers (HF transformers, vLLM) are imported only here, behind
availability checks; nothing in the library imports this package.
"""
