"""The scope every endpoint needs (healerd.api_scopes): the table an operator reads in docs/security.md is the
one the API applies, and no route the API serves is missing from it."""

from __future__ import annotations

import re
from pathlib import Path

from healerd.access import Scope, grants
from healerd.api_scopes import SCOPES, needed

DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"
ROW = re.compile(r"^\| (GET|POST|DELETE|PUT|PATCH) \| `([^`]+)` \| (\w+) \|$")


def test_the_documented_table_is_the_one_the_api_applies() -> None:
    rows: dict[tuple[str, str], Scope | None] = {}
    for line in DOC.read_text().splitlines():
        found = ROW.match(line)
        if found:
            method, route, scope = found.groups()
            rows[(method, route)] = None if scope == "open" else Scope(scope)
    assert rows == SCOPES


def test_a_route_nobody_listed_needs_read_to_read_and_admin_to_change() -> None:
    assert needed("GET", "/api/v1/nothing") is Scope.READ
    assert needed("HEAD", "/api/v1/services") is Scope.READ
    assert needed("POST", "/api/v1/nothing") is Scope.ADMIN


def test_scopes_grant_what_the_documentation_says() -> None:
    assert grants(Scope.ADMIN, Scope.CLUSTER) and grants(Scope.ADMIN, Scope.ALERTS)
    assert grants(Scope.OPERATE, Scope.READ) and not grants(Scope.OPERATE, Scope.ADMIN)
    assert not grants(Scope.ALERTS, Scope.READ) and not grants(Scope.CLUSTER, Scope.OPERATE)
    assert not grants(Scope.READ, Scope.ALERTS)
