"""Connection counting: the total, per client IP address and per logged-in user.

Plain counters in dictionaries (an entry disappears when its count drops to zero), so
the bookkeeping costs nothing per idle connection beyond two dictionary slots.
"""

from __future__ import annotations

from collections import Counter


class ConnectionLimits:
    """Admission control for ``max_connections``, ``max_connections_per_ip`` and
    ``max_connections_per_user``.

    Every successful ``admit_*`` must be paired with one ``release_*``.
    """

    __slots__ = ("_by_ip", "_by_user", "_total", "max_per_ip", "max_per_user", "max_total")

    def __init__(self, max_total: int, max_per_ip: int, max_per_user: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.max_per_user = max_per_user
        self._total = 0
        self._by_ip: Counter[str] = Counter()
        self._by_user: Counter[str] = Counter()

    @property
    def total(self) -> int:
        """Connections admitted and not released."""
        return self._total

    def admit_connection(self, ip: str) -> str | None:
        """Count a new connection from ``ip``.

        Returns:
            None when admitted; otherwise the reason to send with ``* BYE`` (nothing
            was counted then).
        """
        if self._total >= self.max_total:
            return "Too many connections to the server"
        if self._by_ip[ip] >= self.max_per_ip:
            if self._by_ip[ip] == 0:
                del self._by_ip[ip]
            return "Maximum number of connections from your IP address exceeded"
        self._total += 1
        self._by_ip[ip] += 1
        return None

    def release_connection(self, ip: str) -> None:
        """Forget a connection counted by :meth:`admit_connection`."""
        self._total -= 1
        self._by_ip[ip] -= 1
        if self._by_ip[ip] <= 0:
            del self._by_ip[ip]

    def admit_user(self, user: str) -> bool:
        """Count a login of ``user``; False (nothing counted) when over the limit."""
        if self._by_user[user] >= self.max_per_user:
            if self._by_user[user] == 0:
                del self._by_user[user]
            return False
        self._by_user[user] += 1
        return True

    def release_user(self, user: str) -> None:
        """Forget a login counted by :meth:`admit_user`."""
        self._by_user[user] -= 1
        if self._by_user[user] <= 0:
            del self._by_user[user]

    def user_count(self, user: str) -> int:
        """Logged-in connections of ``user``."""
        return self._by_user.get(user, 0)
