"""Build an FS stack from a spec string, as Dovecot does (``"latency:20ms:posix"``).

Grammar (layers separated by ``:``, outermost first; the last layer is a backend)::

    spec     = *(wrapper ":") backend
    wrapper  = "latency" ":" DURATION *("," ("jitter=" DURATION / "seed=" INT))
             / "randomfail" ":" PROBABILITY *("," "seed=" INT)
             / "stats"
    backend  = "memory" / ("posix" / "uring" / "auto") [":" ROOT]

A backend's root may also come from the ``root`` option (the storage passes
``mail_root`` that way); a root written in the spec wins.  Other keyword options go to
the backend (``io_threads``, ``fsync``, ``readahead``, ``nowait_reads`` ...).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any

from aiodbox.fs.api import FS
from aiodbox.fs.backends.memory import MemoryFS
from aiodbox.fs.backends.posix_threads import posix_fs
from aiodbox.fs.backends.uring import UringUnavailable, uring_fs
from aiodbox.fs.backends.uring_ring import probe
from aiodbox.fs.wrappers.latency import LatencyFS
from aiodbox.fs.wrappers.randomfail import RandomFailFS
from aiodbox.fs.wrappers.stats import StatsFS


class FsSpecError(ValueError):
    """The FS spec string or an option is not valid; the message says what and where."""


BackendFactory = Callable[..., FS]
_BACKENDS: dict[str, BackendFactory] = {}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``name`` usable as the backend of a spec; ``factory(root, **options)``."""
    _BACKENDS[name] = factory


def backend_names() -> list[str]:
    """The registered backend names."""
    return sorted(_BACKENDS)


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?)\s*(us|ms|s)\s*$")


def parse_duration(text: str) -> float:
    """``"20ms"`` → 0.02.  Units: ``us``, ``ms``, ``s``."""
    m = _DURATION.match(text)
    if not m:
        raise FsSpecError(f"{text!r} is not a duration (write e.g. 20ms, 0.5s, 300us)")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]


def _options(spec: str, layer: str, param: str) -> tuple[str, dict[str, str]]:
    head, *rest = param.split(",")
    opts: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep:
            raise FsSpecError(f"fs spec {spec!r}: {layer} option {item!r} needs key=value")
        opts[key.strip()] = value.strip()
    return head, opts


def _int_option(spec: str, layer: str, opts: dict[str, str], key: str) -> int:
    try:
        return int(opts.pop(key, "0"))
    except ValueError:
        raise FsSpecError(f"fs spec {spec!r}: {layer} {key} must be an integer") from None


def _no_more(spec: str, layer: str, opts: dict[str, str]) -> None:
    if opts:
        raise FsSpecError(f"fs spec {spec!r}: unknown {layer} option(s) {', '.join(opts)}")


def open_fs(spec: str, **options: Any) -> FS:
    """Build the FS stack described by ``spec``.

    Args:
        spec: e.g. ``"memory"``, ``"posix:/var/mail"``, ``"latency:20ms,jitter=5ms:posix"``,
            ``"randomfail:0.1,seed=7:stats:posix"``.
        **options: backend options; ``root`` is the backend root if the spec has none.

    Raises:
        FsSpecError: the spec or an option is invalid (the message names it).
    """
    layers: list[Callable[[FS], FS]] = []
    rest = spec.strip()
    while True:
        name, _, tail = rest.partition(":")
        name = name.strip()
        if name == "latency":
            param, _, rest = tail.partition(":")
            head, opts = _options(spec, name, param)
            delay = parse_duration(head)
            jitter = parse_duration(opts.pop("jitter")) if "jitter" in opts else 0.0
            seed = _int_option(spec, name, opts, "seed")
            _no_more(spec, name, opts)
            layers.append(functools.partial(_latency, delay=delay, jitter=jitter, seed=seed))
        elif name == "randomfail":
            param, _, rest = tail.partition(":")
            head, opts = _options(spec, name, param)
            try:
                probability = float(head)
            except ValueError:
                raise FsSpecError(f"fs spec {spec!r}: randomfail needs a probability") from None
            seed = _int_option(spec, name, opts, "seed")
            _no_more(spec, name, opts)
            layers.append(functools.partial(_randomfail, probability=probability, seed=seed))
        elif name == "stats":
            layers.append(StatsFS)
            rest = tail
        else:
            factory = _BACKENDS.get(name)
            if factory is None:
                known = ", ".join([*backend_names(), "latency", "randomfail", "stats"])
                raise FsSpecError(f"fs spec {spec!r}: unknown layer {name!r} (known: {known})")
            root = tail.strip() or options.pop("root", None)
            options.pop("root", None)
            try:
                fs = factory(root, **options)
            except TypeError as e:
                raise FsSpecError(f"fs spec {spec!r}: backend {name!r}: {e}") from None
            break
        if not rest:
            raise FsSpecError(f"fs spec {spec!r}: the last layer must be a backend")
    for wrap in reversed(layers):
        fs = wrap(fs)
    return fs


def _latency(fs: FS, *, delay: float, jitter: float, seed: int) -> FS:
    return LatencyFS(fs, delay, jitter, seed)


def _randomfail(fs: FS, *, probability: float, seed: int) -> FS:
    return RandomFailFS(fs, probability, seed)


def _memory(root: str | None, **options: Any) -> FS:
    return MemoryFS(**options)


def _posix(root: str | None, **options: Any) -> FS:
    if not root:
        raise FsSpecError("the posix backend needs a root: 'posix:/path' or root=...")
    return posix_fs(str(root), **options)


register_backend("memory", _memory)
register_backend("posix", _posix)


# --- io_uring and the automatic choice ------------------------------------------------

_log = logging.getLogger("aiodbox.fs")

_URING_ONLY = (
    "uring_entries",
    "uring_max_in_flight",
    "uring_reap_batch",
    "uring_direct_descriptors",
    "uring_page_cache_fast_path",
)
_POSIX_ONLY = ("use_openat2",)


class FsUnavailable(FsSpecError):
    """The backend named in the spec cannot run here (the message says why)."""


def _uring(root: str | None, **options: Any) -> FS:
    if not root:
        raise FsSpecError("the uring backend needs a root: 'uring:/path' or root=...")
    try:
        return uring_fs(str(root), **options)
    except UringUnavailable as e:
        raise FsUnavailable(
            f'the uring backend is unavailable: {e.reason} (use fs = "auto" to fall back to posix)'
        ) from e


def _auto(root: str | None, **options: Any) -> FS:
    """``uring`` where the io_uring probe says it works, else ``posix``; logs the choice."""
    if not root:
        raise FsSpecError("the auto backend needs a root: 'auto:/path' or root=...")
    reason = probe()
    if reason is None:
        try:
            fs = _uring(root, **{k: v for k, v in options.items() if k not in _POSIX_ONLY})
        except FsUnavailable as e:
            reason = str(e)
        else:
            _log.info("fs auto: using the uring backend (io_uring works here)")
            return fs
    _log.info("fs auto: using the posix backend; io_uring is unavailable: %s", reason)
    return _posix(root, **{k: v for k, v in options.items() if k not in _URING_ONLY})


register_backend("uring", _uring)
register_backend("auto", _auto)
