"""The brokers a store talks to: BROKER_URL lists one or several, comma-separated.

A store uses the one that answered last and moves on to the next when a call to it fails (any
broker takes a store's calls: a follower sends them on to the leader, or answers 503 no_leader
while there is none)."""

from __future__ import annotations


class Brokers:
    def __init__(self, urls: str) -> None:
        """`urls`: registration URLs (http://host:8080/register) or bases (http://host:8080)."""
        bases = [u.strip().rstrip("/").removesuffix("/register") for u in urls.split(",")]
        self.bases = [b for b in bases if b] or [""]
        self._current = 0

    @property
    def base(self) -> str:
        return self.bases[self._current]

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def failed(self) -> None:
        """The current one did not answer (or answered 5xx): try the next one next time."""
        self._current = (self._current + 1) % len(self.bases)

    def __str__(self) -> str:
        return ",".join(self.bases)
