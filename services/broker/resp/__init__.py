"""The Redis protocol (RESP2 and RESP3) on the broker: redis-cli, redis-py and redis-benchmark work
unchanged against one endpoint with no MOVED or ASK. See listener.py for the connection, strings.py
and server.py for the commands, protocol.py for the wire."""

from .listener import RespServer

__all__ = ["RespServer"]
