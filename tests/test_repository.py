"""The repository stands on its own: code, tests and docs cite what is in it (docs/…), never a document kept
elsewhere. The rule is `make arch`'s (tools/arch.py), run here so that a citation fails the suite."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_nothing_cites_a_document_outside_the_repository() -> None:
    spec = importlib.util.spec_from_file_location("arch", REPO / "tools" / "arch.py")
    assert spec is not None and spec.loader is not None
    arch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(arch)
    assert arch.citations_elsewhere() == [], "cite docs/ instead"
