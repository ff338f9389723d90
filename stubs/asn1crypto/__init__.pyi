# Partial stubs for asn1crypto, which ships no type information: the value classes hsmkm
# uses, with dump() -> bytes and load() -> Self typed; everything else is Any.
