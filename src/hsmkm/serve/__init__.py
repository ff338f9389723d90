"""The KM on the network: framework-free pieces of ``hsmkm serve`` (ASGI middleware)."""
