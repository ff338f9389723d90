"""``hsmkm serve``: the KM on the network."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import click

from hsmkm import errors
from hsmkm.cli.context import CliContext, pass_cli
from hsmkm.cli.session import open_km_and_pin
from hsmkm.km.config import Home, KmConfig
from hsmkm.km.drainer import Drainer
from hsmkm.km.publishers import publisher_for
from hsmkm.secrets import SecretSource, SourceKind
from hsmkm.server import tls
from hsmkm.server.supervisor import Endpoint, Scheme, Supervisor, bind, bound_endpoint
from hsmkm.server.worker import WorkerSettings

WILDCARDS = {"0.0.0.0", "::", ""}


def _normal_base(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _log(line: str) -> None:
    click.echo(line, err=True)


@click.command("serve")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HTTPS listener, HOST:PORT (port 0: any).")
@click.option("--listen-http", default=None, help="Plain HTTP listener for ca.crt and the CRLs only, HOST:PORT.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Worker processes.")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="Your server certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="Its private key (PEM, unencrypted).")
@click.option(
    "--server-name",
    "server_names",
    multiple=True,
    help="A host name or IP address the embedded TLS certificate names (repeatable; default the --listen host).",
)
@click.option(
    "--base-url", default=None, help="The URL the certificates name for ca.crt and the CRLs; must be the KM's."
)
@click.option("--node-id", default="", help="A name for this node in the access log.")
@click.option(
    "--grace",
    type=click.IntRange(0, 600),
    default=10,
    show_default=True,
    help="Seconds the requests in flight get to finish at SIGTERM.",
)
@click.option(
    "--read-timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Seconds a client has to send a request's headers, and again its body.",
)
@pass_cli
def serve(
    cli_ctx: CliContext,
    listen: str,
    listen_http: str | None,
    workers: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    server_names: tuple[str, ...],
    base_url: str | None,
    node_id: str,
    grace: int,
    read_timeout: float,
) -> None:
    """Serve the KM: EST under /.well-known/est/, /directory/{email}, ca.crt and the CRLs.

    Each worker logs in to the KM token once (the PIN from --pin-source, else the embedded
    default's trial PIN) and gets the PIN through a pipe. Without --tls-cert/--tls-key the
    KM CA issues the server certificate for the listen names into HOME/tls/. SIGTERM stops
    accepting, lets the requests in flight finish, and exits 0.

    \b
    Examples:
      hsmkm serve
      hsmkm serve --listen 0.0.0.0:8443 --server-name km.example.com \\
            --listen-http 0.0.0.0:8080 --base-url http://km.example.com:8080/ --workers 4
      hsmkm serve --tls-cert server.pem --tls-key server.key --pin-source env:KM_PIN
    """
    https_at = Endpoint.parse(listen)
    http_at = Endpoint.parse(listen_http) if listen_http else None
    if (tls_cert is None) != (tls_key is None):
        raise errors.BadInput("--tls-cert and --tls-key go together")
    config = KmConfig.load(Home(cli_ctx.home))
    if base_url is not None and _normal_base(base_url) != _normal_base(config.base_url):
        raise errors.BadInput(
            f"--base-url {base_url} is not the KM's base URL {config.base_url} (the one its certificates name)"
        )
    names = list(server_names) or [https_at.host]
    if tls_cert is None and any(n in WILDCARDS for n in names):
        raise errors.BadInput("listening on every address: name the server with --server-name")
    km, pin = open_km_and_pin(cli_ctx, cli_ctx.home, cli_ctx.pin_source, "serve")
    try:
        if tls_cert is not None and tls_key is not None:
            files = tls.TlsFiles(tls_cert, tls_key)
            tls.check_pair(files)
        else:
            files = tls.ensure_embedded(km, names)
    finally:
        km.close()
        km.session.close()
    https_sock = bind(https_at)
    http_sock = bind(http_at) if http_at is not None else None
    settings = WorkerSettings(
        home=str(cli_ctx.home.absolute()),
        https_fd=-1,
        http_fd=None,
        status_fd=-1,
        tls_cert=str(files.cert.absolute()),
        tls_key=str(files.key.absolute()),
        graceful_timeout=grace,
        node=node_id,
        read_timeout=read_timeout,
    )
    supervisor = Supervisor(settings, pin, https_sock, http_sock, workers, _log, env=_worker_env(cli_ctx, config))
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    supervisor.start()
    urls = {Scheme.HTTPS.value: bound_endpoint(https_sock).url(Scheme.HTTPS)}
    if http_sock is not None:
        urls[Scheme.HTTP.value] = bound_endpoint(http_sock).url(Scheme.HTTP)
    for url in urls.values():
        _log(f"hsmkm: serving {url}")
    if cli_ctx.json:
        click.echo(json.dumps({**urls, "workers": [w.proc.pid for w in supervisor.workers]}, sort_keys=True))
    # One drainer, here in the supervisor (the workers leave the LDAP rows to it).
    drainer = Drainer(cli_ctx.home, publisher_for(cli_ctx.home, cli_ctx.secret), _log) if config.ldap else None
    if drainer is not None:
        drainer.start()
    try:
        supervisor.run()
    finally:
        if drainer is not None:
            drainer.stop()
    _log("hsmkm: stopped")


def _worker_env(cli_ctx: CliContext, config: KmConfig) -> dict[str, str]:
    """The workers' environment: this one, less the variable the PIN came from (they get it
    through their pipe)."""
    env = dict(os.environ)
    spec = cli_ctx.pin_source or config.km_pin_source
    if spec:
        source = SecretSource.parse(spec)
        if source.kind is SourceKind.ENV:
            env.pop(source.ref, None)
    env.pop("HSMKM_PIN_SOURCE", None)
    return env
