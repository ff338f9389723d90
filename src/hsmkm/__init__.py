"""hsmkm: a key management server for secure messaging with keys in a PKCS#11 module."""

__version__ = "0.1.0"
