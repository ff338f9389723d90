"""EST (RFC 7030, with RFC 8951's clarifications) on the wire: pure codecs, no I/O.

``transfer`` the base64 bodies, ``certsonly`` the certs-only PKCS#7, ``csrattrs`` what the KM
wants in a CSR, ``csr`` CSR intake, ``keypart`` the encrypted server-generated key,
``multipart`` the serverkeygen response, ``media`` the content types.
"""
