"""The architecture, checked: imports point downwards, sans-IO cores stay sans-IO."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "aiodbox"

RANK = {
    "config": 0,
    "metrics": 0,
    "random_ids": 0,
    "fs": 1,
    "streams": 2,
    "dbox": 3,
    "message": 3,
    "index": 4,
    "auth": 4,
    "storage": 5,
    "importers": 6,
    "imap": 7,
    "lmtp": 7,
    "cli": 8,
    "demo": 8,
}

SANS_IO = [
    "dbox/format.py",
    "dbox/codec.py",
    "dbox/v2.py",
    "dbox/fix.py",
    "dbox/dump.py",
    "message",
    "imap/protocol",
    "auth/sasl.py",
    "auth/schemes.py",
    "lmtp/data.py",
    "lmtp/trace.py",
    "importers/dovecot_index.py",
    "importers/dovecot_list.py",
]
IO_MODULES = {"asyncio", "socket", "selectors", "ssl", "subprocess"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "aiodbox" or len(parts) < 2:
        return None
    return parts[1]


def test_every_package_has_a_rank() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and not p.name.startswith("_")}
    modules = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}
    assert packages | modules <= set(RANK), sorted((packages | modules) - set(RANK))


def test_imports_point_downwards() -> None:
    wrong = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        own = rel.parts[0].removesuffix(".py")
        if own not in RANK:
            continue
        for module in _imports(path):
            layer = _layer(module)
            if layer is None or layer == own or layer not in RANK:
                continue
            if RANK[layer] > RANK[own]:
                wrong.append(f"{rel} imports {module}")
    assert wrong == []


def test_sans_io_cores_import_no_io() -> None:
    wrong = []
    for entry in SANS_IO:
        target = SRC / entry
        files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
        assert files, entry
        for path in files:
            for module in _imports(path):
                if module.split(".")[0] in IO_MODULES:
                    wrong.append(f"{path.relative_to(SRC)} imports {module}")
    assert wrong == []
