"""The configuration file (TOML, DESIGN.md §10) loaded into typed settings.

Every key has a type and a default here, in one place.  Loading reports, with the file
name, the key and what was expected: values of the wrong type, sizes and durations that
do not parse, unknown sections and unknown keys (a misspelt key is an error, never
silently ignored).  Relative paths are relative to the config file's directory.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_VAR = "AIODBOX_CONFIG"
DEFAULT_NAME = "aiodbox.toml"


class ConfigError(Exception):
    """The config file is missing, does not parse, or holds an invalid value."""


_SIZE = re.compile(r"^\s*([0-9]+)\s*([kKmMgG]?)[bB]?\s*$")
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)\s*$")


def parse_size(value: str | int) -> int:
    """``"10M"`` → 10485760; plain integers are bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a size (write e.g. 10M, 512k, 4096)")
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def parse_duration(value: str | int | float) -> float:
    """``"30m"`` → 1800.0 seconds; plain numbers are seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (write e.g. 500ms, 30s, 30m, 2h)")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]


def _kind(kind: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, **extra}


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """``[storage]``."""

    format: str = field(default="mdbox", metadata=_kind("choice", choices=("mdbox", "sdbox")))
    mail_root: Path = field(default=Path("data/mail"), metadata=_kind("path"))
    index_root: Path = field(default=Path("data/index"), metadata=_kind("path"))
    fs: str = field(default="auto", metadata=_kind("str"))
    io_threads: int = field(default=10, metadata=_kind("int", min=1, max=1024))
    prefetch: int = field(default=10, metadata=_kind("int", min=1, max=4096))
    mdbox_rotate_size: int = field(default=10 << 20, metadata=_kind("size"))
    fsync: str = field(
        default="optimized", metadata=_kind("choice", choices=("always", "optimized", "never"))
    )
    readahead: int = field(default=64 << 10, metadata=_kind("size"))
    nowait_reads: bool = field(default=True, metadata=_kind("bool"))


@dataclass(frozen=True, slots=True)
class ImapConfig:
    """``[imap]``."""

    listen: tuple[str, ...] = field(default=("127.0.0.1:1143",), metadata=_kind("listen"))
    tls_listen: tuple[str, ...] = field(default=(), metadata=_kind("listen"))
    max_line_length: int = field(default=64 << 10, metadata=_kind("size"))
    max_literal_size: int = field(default=50 << 20, metadata=_kind("size"))
    max_connections_per_user: int = field(default=50, metadata=_kind("int", min=1))
    max_connections_per_ip: int = field(default=200, metadata=_kind("int", min=1))
    max_connections: int = field(default=20000, metadata=_kind("int", min=1))
    login_timeout: float = field(default=60.0, metadata=_kind("duration"))
    idle_timeout: float = field(default=1800.0, metadata=_kind("duration"))
    output_buffer_size: int = field(default=256 << 10, metadata=_kind("size"))


@dataclass(frozen=True, slots=True)
class LmtpConfig:
    """``[lmtp]``."""

    listen: tuple[str, ...] = field(default=("127.0.0.1:2424",), metadata=_kind("listen"))
    max_message_size: int = field(default=50 << 20, metadata=_kind("size"))


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``."""

    passwd_file: Path = field(default=Path("data/users"), metadata=_kind("path"))
    default_scheme: str = field(default="CRYPT", metadata=_kind("str"))
    failure_delay: float = field(default=2.0, metadata=_kind("duration"))
    allow_plaintext: bool = field(default=False, metadata=_kind("bool"))


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """``[tls]``: certificate and key for STARTTLS and implicit TLS."""

    cert: Path | None = field(default=None, metadata=_kind("path"))
    key: Path | None = field(default=None, metadata=_kind("path"))


@dataclass(frozen=True, slots=True)
class LogConfig:
    """``[log]``."""

    file: Path | None = field(default=None, metadata=_kind("path"))
    level: str = field(
        default="info", metadata=_kind("choice", choices=("debug", "info", "warning", "error"))
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the OpenMetrics endpoint, off unless ``listen`` is set."""

    listen: tuple[str, ...] = field(default=(), metadata=_kind("listen"))


@dataclass(frozen=True, slots=True)
class Config:
    """All settings.  ``path`` is the file they came from (None for defaults)."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    lmtp: LmtpConfig = field(default_factory=LmtpConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    path: Path | None = None


_SECTIONS: dict[str, type[Any]] = {
    "storage": StorageConfig,
    "imap": ImapConfig,
    "lmtp": LmtpConfig,
    "auth": AuthConfig,
    "tls": TlsConfig,
    "log": LogConfig,
    "metrics": MetricsConfig,
}

_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\s\[\]]+):([0-9]{1,5})$")


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:1143"`` or ``"[::1]:1143"`` → (host, port)."""
    m = _LISTEN.match(value.strip())
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise ValueError(f"{value!r} is not host:port (write e.g. 127.0.0.1:1143 or [::1]:1143)")
    return m.group(1).strip("[]"), int(m.group(2))


def _convert(meta: dict[str, Any], value: Any, base: Path) -> Any:
    kind = meta["kind"]
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    if kind == "choice":
        if value not in meta["choices"]:
            raise ValueError(f"expected one of {', '.join(map(repr, meta['choices']))}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("expected an integer")
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError(f"expected an integer in {lo}..{hi if hi is not None else ''}")
        return value
    if kind == "size":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError("expected a size such as 10M")
        return parse_size(value)
    if kind == "duration":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError("expected a duration such as 30s")
        return parse_duration(value)
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise ValueError("expected a path string")
        p = Path(value).expanduser()
        return p if p.is_absolute() else (base / p)
    if kind == "listen":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError('expected a list of "host:port" strings')
        for item in items:
            parse_listen(item)
        return tuple(items)
    raise AssertionError(kind)


def _section(cls: type[Any], name: str, raw: Any, where: str, base: Path) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{where}: [{name}] unknown key(s) {', '.join(unknown)} (known: {known})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            values[key] = _convert(dict(fields[key].metadata), value, base)
        except ValueError as e:
            raise ConfigError(f"{where}: [{name}] {key}: {e} (got {value!r})") from None
    # Default paths are relative to the config file too.
    for f in fields.values():
        if f.name not in values and f.metadata.get("kind") == "path":
            default = f.default
            if isinstance(default, Path) and not default.is_absolute():
                values[f.name] = base / default
    return cls(**values)


def config_from_dict(raw: dict[str, Any], base: Path, where: str = "<config>") -> Config:
    """Build a :class:`Config` from parsed TOML; ``base`` anchors relative paths."""
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown section(s) {', '.join(unknown)} (known: {', '.join(_SECTIONS)})"
        )
    sections = {
        name: _section(cls, name, raw.get(name, {}), where, base) for name, cls in _SECTIONS.items()
    }
    return Config(**sections)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a config file (blocking: call it before the loop starts).

    Raises:
        ConfigError: the file is missing or unreadable, does not parse (the message has
            the line), or a value is invalid.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the config file: {e.strerror}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: does not parse: {e}") from None
    cfg = config_from_dict(raw, p.resolve().parent, str(p))
    return dataclasses.replace(cfg, path=p)


def find_config(explicit: str | None) -> Path | None:
    """The config file to use: ``--config``, then ``$AIODBOX_CONFIG``, then ./aiodbox.toml.

    Returns None when none is given and ./aiodbox.toml does not exist.
    """
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    local = Path(DEFAULT_NAME)
    return local if local.exists() else None
