"""unhardcoded: a decision layer for LLM calls.

The policy travels with the call as data; the router admits it, fingerprints
it, ranks the catalog with it, runs the call on your own provider keys with the
failover it describes, and writes a receipt that replays.
"""

__version__ = "0.1.0"
