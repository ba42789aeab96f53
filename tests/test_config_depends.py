"""`depends_on` in the config (docs/remediation.md): the services named exist, none depends on itself, and no circle."""

from __future__ import annotations

from pathlib import Path

from test_config import problems_of, write

from healerd.config import load_config

CONFIG = """\
providers:
  lab: {kind: static}
services:
  db:
    provider: lab
    machines: [{id: db-1, address: "127.0.0.1:5432"}]
    checks: [{name: tcp, kind: tcp}]
DB_DEPENDS
  web:
    provider: lab
    machines: [{id: web-1, address: "127.0.0.1:8080"}]
    checks: [{name: tcp, kind: tcp}]
    depends_on: WEB_DEPENDS
"""


def config(web: str = "[db]", db: str = "") -> str:
    return CONFIG.replace("WEB_DEPENDS", web).replace("DB_DEPENDS\n", f"    depends_on: {db}\n" if db else "")


def test_a_dependency_is_loaded(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, config()))
    assert cfg.services["web"].depends_on == ("db",)
    assert cfg.services["db"].depends_on == ()


def test_an_unknown_dependency_is_named_with_a_suggestion(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, config("[dbb]"))
    assert "services.web.depends_on[0]: unknown service 'dbb'" in problem and "did you mean 'db'" in problem


def test_a_service_cannot_depend_on_itself(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, config("[web]"))
    assert "services.web.depends_on[0]: a service cannot depend on itself" in problem


def test_a_circle_of_dependencies_is_refused_once_with_the_circle(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, config("[db]", db="[web]"))
    assert "the dependencies go round in a circle: " in problem
    assert "db -> web -> db" in problem or "web -> db -> web" in problem
