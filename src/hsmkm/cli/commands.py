"""Imports every command module so that each registers its commands on the group."""

from hsmkm.cli import km_cmds  # noqa: F401
