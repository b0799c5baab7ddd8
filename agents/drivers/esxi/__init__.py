"""The ESXi driver: pyvmomi against a standalone ESXi host or a vCenter (see README.md)."""

from agents.drivers.esxi.config import EsxiConfig
from agents.drivers.esxi.driver import EsxiHost, open_esxi
from agents.drivers.esxi.session import UID_KEY, Session

__all__ = ["UID_KEY", "EsxiConfig", "EsxiHost", "Session", "open_esxi"]
