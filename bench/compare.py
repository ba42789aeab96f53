"""Two revisions of healerd measured in one run: CPU per check and the heal loop, new / old.

    python -m bench.compare main                      # this working tree against main
    python -m bench.compare HEAD~3 HEAD --rounds 5    # two commits
    python -m bench.compare main --scenarios heal --heals 10

Each revision is exported (`git archive`) to a temporary directory and its daemon run from there, by this
checkout's interpreter and bench; without NEW_REV the new side is this checkout's working tree. The two
sides take turns measurement by measurement (old, new, then new, old the next round), so that whatever
else the machine does weighs on both. Exit status 0 when no figure of the new side is worse than the old
one's by more than the tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .__main__ import COST_TARGETS, RESULTS, healerd_target_cost, log
from ._heal import scenario_heal
from ._system import Nginx, source_env, stop_started

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = ("cost", "heal")
#: The cost rows measured unless --cost-targets says otherwise: every kind of connection but a fresh TLS
#: handshake per check, which saturates the core at 1,000 checks a second (ask for https_fresh by name).
DEFAULT_TARGETS = ("http_keepalive", "http_fresh", "https_keepalive")


@dataclass(frozen=True)
class Side:
    name: str  # "old" or "new"
    label: str  # the revision as given, and its commit
    tree: Path


@dataclass(frozen=True)
class Figure:
    """One compared figure; every one is lower-is-better."""

    scenario: str
    name: str
    old: list[float]
    new: list[float]

    def medians(self) -> tuple[float, float]:
        return statistics.median(self.old), statistics.median(self.new)

    def ratio(self) -> float:
        old, new = self.medians()
        return new / old if old else float("inf")

    def passes(self, tolerance: float) -> bool:
        return self.ratio() <= 1 + tolerance


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True).stdout


def resolve(rev: str) -> str | None:
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
    except subprocess.CalledProcessError:
        return None


def export(commit: str, into: Path) -> Path:
    """The files of `commit` under `into` (no checkout: the repository's worktrees and index stay as they are)."""
    into.mkdir()
    with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", commit))) as tar:
        tar.extractall(into, filter="data")
    return into


def check_imports_from(tree: Path, scratch: Path) -> None:
    """Fail before measuring anything if `python -m healerd` run for `tree` would import healerd elsewhere."""
    found = subprocess.run(
        [sys.executable, "-c", "import healerd; print(healerd.__file__)"],
        env=source_env(tree),
        cwd=scratch,
        capture_output=True,
        text=True,
    )
    where = Path(found.stdout.strip()).resolve() if found.returncode == 0 else None
    if where is None or not where.is_relative_to(tree.resolve()):
        said = (found.stdout + found.stderr).strip()
        raise SystemExit(f"python -m healerd run for {tree} would not import healerd from there: {said}")


def measure_cost(nginx: Nginx, targets: list[str], seconds: float, sides: list[Side]) -> dict[str, dict[str, float]]:
    """healerd's CPU ms per check on each target, one side after the other: {title: {side: value}}."""
    out: dict[str, dict[str, float]] = {}
    for key in targets:
        title = next(row[1] for row in COST_TARGETS if row[0] == key)
        for side in sides:
            log(f"cost: {title}: {side.name}")
            row = healerd_target_cost(nginx, key, seconds, side.tree)
            log(f"  {row}")
            out.setdefault(f"CPU ms per check, {title}", {})[side.name] = row["cpu_per_1000"]
    return out


def measure_heal(heals: int, sides: list[Side]) -> dict[str, dict[str, list[float]]]:
    """Every heal's own share and time to heal, per side: {figure: {side: values}}."""
    own, total = "healerd's own share of a heal, ms", "time to heal (broken → replacement in rotation), s"
    out: dict[str, dict[str, list[float]]] = {own: {}, total: {}}
    for side in sides:
        log(f"heal: {heals} heals on the demo fleet: {side.name}")
        result = scenario_heal(heals, log, side.tree)
        out[own][side.name] = [h["own_seconds"] * 1000 for h in result["heals"]]
        out[total][side.name] = [
            h["detection_seconds"] + h["own_seconds"] + h["boot_and_probation_seconds"] for h in result["heals"]
        ]
        log(f"  own share median {statistics.median(out[own][side.name]):.1f} ms")
    return out


def table(figures: list[Figure], tolerance: float) -> str:
    lines = [
        "| scenario | figure | old (median) | new (median) | new / old | |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        old, new = f.medians()
        lines.append(
            f"| {f.scenario} | {f.name} | {old:.4g} (n={len(f.old)}) | {new:.4g} (n={len(f.new)}) | "
            f"{f.ratio():.3f} | {'PASS' if f.passes(tolerance) else 'FAIL'} |"
        )
    return "\n".join(lines)


def run(old: Side, new: Side, scenarios: list[str], args: argparse.Namespace) -> list[Figure]:
    """`args.rounds` rounds of every scenario, the sides taking turns: old first in odd rounds, new in even."""
    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    nginx = Nginx(core=1) if "cost" in scenarios else None
    try:
        for r in range(args.rounds):
            order = [old, new] if r % 2 == 0 else [new, old]
            log(f"round {r + 1}/{args.rounds}: {order[0].name} first")
            if nginx is not None:
                for name, by_side in measure_cost(nginx, args.cost_targets.split(","), args.seconds, order).items():
                    for side_name, value in by_side.items():
                        samples.setdefault(("cost", name), {}).setdefault(side_name, []).append(value)
            if "heal" in scenarios:
                for name, by_side_list in measure_heal(args.heals, order).items():
                    for side_name, values in by_side_list.items():
                        samples.setdefault(("heal", name), {}).setdefault(side_name, []).extend(values)
    finally:
        if nginx is not None:
            nginx.stop()
    return [Figure(scenario, name, s["old"], s["new"]) for (scenario, name), s in samples.items()]


def _stop(signum: int, frame: FrameType | None) -> None:
    log(f"{signal.Signals(signum).name}: stopping what the run started")
    raise SystemExit(128 + signum)  # unwinds through every scenario's clean-up


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("old", metavar="OLD_REV", help="the revision to compare with (branch, tag, commit)")
    p.add_argument(
        "new", metavar="NEW_REV", nargs="?", help="the revision measured against it (default: this working tree)"
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--rounds", type=int, default=3, help="measurements of each figure per side")
    p.add_argument("--tolerance", type=float, default=0.10, help="how much worse new may be than old (0.10: 10 %%)")
    p.add_argument("--cost-targets", default=",".join(DEFAULT_TARGETS), help="cost rows, of "
                   f"{', '.join(row[0] for row in COST_TARGETS)}")  # fmt: skip
    p.add_argument("--seconds", type=float, default=15.0, help="length of each cost measurement")
    p.add_argument("--heals", type=int, default=6, help="heals per side and round")
    args = p.parse_args()
    scenarios = [s for s in SCENARIOS if s in args.scenarios.split(",")]
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown or not scenarios:
        p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    bad_targets = set(args.cost_targets.split(",")) - {row[0] for row in COST_TARGETS}
    if bad_targets:
        p.error(f"unknown cost target(s) {', '.join(sorted(bad_targets))}")
    if args.rounds < 1 or args.heals < 1:
        p.error("--rounds and --heals must be at least 1")
    commits = {rev: resolve(rev) for rev in (args.old, args.new) if rev is not None}
    for rev, commit in commits.items():
        if commit is None:
            p.error(f"{rev}: not a commit of the repository at {REPO}")

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="healerd-bench-compare-"))
    try:
        old = Side("old", f"{args.old} ({commits[args.old]})", export(str(commits[args.old]), tmp / "old"))
        if args.new is None:
            new = Side("new", f"working tree of {REPO}", REPO)
        else:
            new = Side("new", f"{args.new} ({commits[args.new]})", export(str(commits[args.new]), tmp / "new"))
        for side in (old, new):
            check_imports_from(side.tree, tmp)
            log(f"{side.name}: {side.label}")
        figures = run(old, new, scenarios, args)
    finally:
        left = stop_started()
        if left:
            log(f"stopped {len(left)} process(es) a scenario had left running: {left}")
        shutil.rmtree(tmp, ignore_errors=True)

    md = table(figures, args.tolerance)
    took = time.monotonic() - started
    how = {
        "cost": f"cost: the median of the rounds ({args.seconds:g} s each)",
        "heal": f"heal: the median of every heal ({args.heals} a round)",
    }
    header = (
        f"old: {old.label}\nnew: {new.label}\n{args.rounds} round(s), the sides taking turns; "
        f"{'; '.join(how[s] for s in scenarios)}; FAIL when new / old > {1 + args.tolerance:g}. "
        f"Took {took / 60:.1f} min."
    )
    print(f"\n{header}\n\n{md}\n")
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / ("compare-" + time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime()))
    stem.with_suffix(".md").write_text(f"{header}\n\n{md}\n")
    raw: dict[str, Any] = {"old": old.label, "new": new.label, "seconds": round(took, 1)}
    raw["figures"] = [{"scenario": f.scenario, "figure": f.name, "old": f.old, "new": f.new} for f in figures]
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=2))
    log(f"written {stem}.md and .json")
    return 0 if all(f.passes(args.tolerance) for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
