"""``hsmkm serve``: the KM on the network — an adapter beside cli/: a Starlette application
under uvicorn, worker processes that each hold one KM login, and the supervisor that starts
and restarts them.

The HTTP interface (HTTPS; the plain listener, ``--listen-http``, serves only the three
distribution paths, which the certificates' ``http://`` CDP and AIA name):

=============================================  ==========================================================
``GET /.well-known/est/cacerts``               certs-only PKCS#7, base64 (RFC 7030 §4.1)
``GET /.well-known/est/csrattrs``              ``application/csrattrs``, base64 (§4.5; RFC 8951)
``POST /.well-known/est/simpleenroll``         base64 PKCS#10 → certs-only with the signing certificate (§4.2)
``POST /.well-known/est/serverkeygen``         a CSR with a DecryptKeyIdentifier → ``multipart/mixed``: the
                                               key in EnvelopedData/KEKRecipientInfo, then certs-only (§4.4)
``POST /hsmkm/est/keyhistory``                 as serverkeygen, after the KEY stage of a recovery code:
                                               a key part and a certs-only part per archived key; 204 for
                                               none; 409 before the KEY stage
``GET /directory/{email}``                     the current certificates: DER, JSON list or PEM by Accept
``GET /ca.crt``, ``/crl/full.crl``,            from the database, ETag / Last-Modified / 304 /
``/crl/delta.crl``                             Cache-Control until nextUpdate
``GET /hsmkm/health``                          ``ok`` once the worker has its KM
=============================================  ==========================================================

The enrollment POSTs authenticate with HTTP Basic over TLS (RFC 7030 §3.2.3): the address and
its one-time code; without credentials 401 with ``WWW-Authenticate: Basic realm="hsmkm"``, a
refused code 403 (the same for an unknown address). keyhistory is hsmkm's own operation — EST
has none for a recovered user's archived keys — under the KM's own path, authenticated and
encrypted exactly as serverkeygen (each key under the KEK the code and the request's
DecryptKeyIdentifier give), and within the same one-code enrollment.

Errors are one ``text/plain`` line (RFC 8951 §3.1 lets an EST server say why), problem JSON
(RFC 9457) where the client accepts JSON; never a traceback.
"""
