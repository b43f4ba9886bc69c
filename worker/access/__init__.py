"""Who may read what: principals, scopes, and the source and target checks.

Shared by the API (which checks every request) and the worker (which checks the stored record
again before it touches the source), so it lives below ``app`` in the dependency order.
"""
