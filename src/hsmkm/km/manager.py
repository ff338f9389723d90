"""An opened KM: its configuration, database, token session, CA key and audit log."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from hsmkm import errors, keys
from hsmkm.clock import Clock, system_clock
from hsmkm.keys.base import PrivateKey
from hsmkm.keys.token import Repair, SecretKey, Token
from hsmkm.km.anchor import TokenAnchor, anchor_lock
from hsmkm.km.audit import AuditAction, AuditLog, crl_number_of
from hsmkm.km.config import AUDIT_KEY_LABEL, CA_KEY_LABEL, Home, KmConfig, TokenRef
from hsmkm.km.publisher import Publisher
from hsmkm.store.database import Database
from hsmkm.store.tx import Tx
from hsmkm.x509.anchor import load_ca_certificate


def open_token(ref: TokenRef, pin: str, softhsm_config: str | None) -> Token:
    """Log in to the token ``ref`` names (once per process)."""
    return keys.open_token(ref.uri, pin, softhsm_config=softhsm_config)


@dataclass
class Change:
    """What one state change records in its audit entry."""

    actor: str
    action: AuditAction
    tx: Tx
    details: dict[str, Any] = field(default_factory=dict)


class KeyManager:
    """The server side, opened on a home with the KM token's PIN."""

    def __init__(
        self,
        home: Home,
        config: KmConfig,
        db: Database,
        session: Token,
        clock: Clock,
        actor: str,
        publisher: Publisher,
    ) -> None:
        self.home = home
        self.config = config
        self.db = db
        self.session = session
        self.clock = clock
        self.actor = actor
        # Where certificates, the CA certificate and CRLs go: chosen by the adapter.
        self.publisher = publisher
        self._ca_key: PrivateKey | None = None
        self._ca_cert: x509.Certificate | None = None
        self._audit_key: SecretKey | None = None
        self._archive_key: SecretKey | None = None
        # Token files the store check restored when this KM was opened (each audited).
        self.repairs: list[Repair] = []
        self._anchor: TokenAnchor | None = None
        self._txn: tuple[Tx, AuditLog] | None = None

    @classmethod
    def open(
        cls, root: Path, km_pin: str, clock: Clock = system_clock, actor: str = "operator", *, publisher: Publisher
    ) -> KeyManager:
        home = Home(root)
        config = KmConfig.load(home)
        db = Database.open(home.database)
        session = open_token(config.km_token, km_pin, config.softhsm_config)
        km = cls(home, config, db, session, clock, actor, publisher)
        km.repairs = session.module.take_repairs()
        if km.repairs:
            with km.change(
                AuditAction.TOKEN_REPAIR,
                repairs=[{"token_dir": r.token_dir, "file": r.file, "kind": r.kind.value} for r in km.repairs],
            ):
                pass
        return km

    # --- keys on the KM token ---------------------------------------------------------------

    @property
    def ca_key(self) -> PrivateKey:
        if self._ca_key is None:
            self._ca_key = self.session.private_key(label=CA_KEY_LABEL)
        return self._ca_key

    @property
    def ca_cert(self) -> x509.Certificate:
        if self._ca_cert is None:
            try:
                self._ca_cert = load_ca_certificate(self.home.ca_cert.read_bytes(), str(self.home.ca_cert))
            except FileNotFoundError:
                raise errors.NotFound("the KM has no CA certificate yet (import it with 'hsmkm ca import')") from None
        return self._ca_cert

    @property
    def audit_key(self) -> SecretKey:
        if self._audit_key is None:
            self._audit_key = self.session.secret_key(AUDIT_KEY_LABEL)
        return self._audit_key

    @property
    def archive_key(self) -> SecretKey:
        with self.db.read() as tx:
            label = tx.meta.get("archive_key_label") or self.config.archive_key_label
        if self._archive_key is None or self._archive_key.label != label:
            self._archive_key = self.session.secret_key(label)
        return self._archive_key

    def archive_key_by_label(self, label: str) -> SecretKey:
        return self.session.secret_key(label)

    # --- state changes ----------------------------------------------------------------------

    @property
    def anchor(self) -> TokenAnchor:
        """The audit head anchored on the KM token."""
        if self._anchor is None:
            self._anchor = TokenAnchor(self.session, self.audit_key.hmac_sha256, anchor_lock(self.home))
        return self._anchor

    def audit(self, tx: Tx | None = None) -> AuditLog:
        """The audit log; inside ``transaction()``, the one that transaction appends to."""
        if self._txn is not None and (tx is None or tx is self._txn[0]):
            return self._txn[1]
        return AuditLog(tx or self.db.reader(), self.audit_key.hmac_sha256, self.clock, guard=self.anchor.check)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A write transaction whose audit appends are checked against the database's head and
        the token's anchor first, and anchored on the token once it has committed."""
        if self._txn is not None:
            raise RuntimeError("KeyManager.transaction() does not nest")
        with self.db.write() as tx:
            log = AuditLog(tx, self.audit_key.hmac_sha256, self.clock, guard=self.anchor.check)
            self._txn = (tx, log)
            try:
                yield tx
                crl_number = crl_number_of(tx) if log.appended is not None else 0
            finally:
                self._txn = None
        # Committed: from here a crash leaves the database ahead of the anchor, which is allowed.
        if log.appended is not None:
            self.anchor.advance(log.appended, crl_number)

    @contextlib.contextmanager
    def change(self, action: AuditAction, **details: Any) -> Iterator[Change]:
        """One state change: one database transaction and one audit entry, or nothing.

        Refused (AuditChainBroken) before the body runs if the log was cut or rolled back."""
        with self.transaction() as tx:
            log = self.audit(tx)
            log.check()
            ch = Change(self.actor, action, tx, dict(details))
            yield ch
            log.append(ch.actor, ch.action, ch.details)

    def close(self) -> None:
        self.db.close()
