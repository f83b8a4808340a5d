"""Raspberry Pi device agent and fleet simulator for iotbridge (see docs/devices.md)."""

__version__ = "0.1.0"
