"""``hsmkm serve``: the KM on the network (EST, the directory, CA certificate and CRLs over
HTTP) — an adapter beside cli/: a Starlette application under uvicorn, worker processes that
each hold one KM login, and the supervisor that starts and restarts them."""
