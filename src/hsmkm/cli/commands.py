"""Imports every command module so that each registers its commands on the group."""

from hsmkm.cli import client_cmds, crl_cmds, db_cmds, km_cmds, msg_cmds, recovery_cmds, user_cmds  # noqa: F401
