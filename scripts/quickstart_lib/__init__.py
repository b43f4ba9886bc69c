"""Helpers of ``scripts/quickstart``: processes, the demo table, the REST client and the read-back.

Each module has one job; ``scripts/quickstart.py`` wires them into the steps a user sees.
"""
