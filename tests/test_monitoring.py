"""healerd's own monitoring kit (monitoring/): the Prometheus rules pass `promtool check rules` and their unit
tests (`promtool test rules`, Prometheus's own rule engine: HealerdRemediationFailed fires on the first failed
remediation because the counter exists at 0 before it), and the Grafana dashboard is valid JSON whose every
query parses (promtool) and names only metrics healerd exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from conftest import require_binary

from healerd.metrics import METRICS

KIT = Path(__file__).resolve().parents[1] / "monitoring"
#: every series name healerd exports (counters with _total, histograms with their suffixes)
EXPORTED = {
    name
    for d in METRICS
    for name in (
        [f"healerd_{d.name}_total"]
        if d.kind == "counter"
        else [f"healerd_{d.name}_bucket", f"healerd_{d.name}_sum", f"healerd_{d.name}_count"]
        if d.kind == "histogram"
        else [f"healerd_{d.name}"]
    )
} | {"healerd_build_info"}


def promtool(*args: str, cwd: Path = KIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bhealerd_[a-z_]+", expr))


def test_the_rules_pass_promtool_check_rules() -> None:
    rules = sorted(p.name for p in KIT.glob("*.yml"))
    assert rules == ["healerd-rules.yml"]
    out = promtool("check", "rules", *rules)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 11 rules found" in out.stdout


def test_the_rules_fire_as_their_unit_tests_say() -> None:
    out = promtool("test", "rules", "healerd-rules.test.yaml")
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_rule_names_real_metrics_and_says_what_to_do() -> None:
    doc = yaml.safe_load((KIT / "healerd-rules.yml").read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    for rule in rules:
        assert names_in(rule["expr"]) and names_in(rule["expr"]) <= EXPORTED, (rule["alert"], names_in(rule["expr"]))
        annotations = rule["annotations"]
        assert annotations["summary"] and len(annotations["description"]) > 60, rule["alert"]
        assert annotations["runbook_url"].startswith("https://"), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")


def test_the_dashboard_is_valid_and_every_query_parses(tmp_path: Path) -> None:
    dash = json.loads((KIT / "grafana-healerd.json").read_text())
    assert dash["title"] == "healerd" and dash["uid"] == "healerd"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert len(exprs) >= 14
    for e in exprs:
        assert names_in(e) <= EXPORTED, (e, names_in(e) - EXPORTED)
    # Grafana's variables as Prometheus would see them once substituted; then the real parser judges
    concrete = [e.replace("$__rate_interval", "1m").replace('=~"$service"', '=~".*"') for e in exprs]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e} for i, e in enumerate(concrete)]}
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    out = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
