"""Python clients and the `snapkv` command."""

from .client import AsyncClient, Client, SnapkvHTTPError

__all__ = ["AsyncClient", "Client", "SnapkvHTTPError"]
