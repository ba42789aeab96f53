"""The repository stands on its own: code, tests and docs cite what is in it (docs/…), never a document kept
elsewhere."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: a section of a design document kept outside (its name, a space, a section sign), or a path above the repository
ELSEWHERE = re.compile("DESIGN" + r" §|\.\./shared/")
TEXT = (".py", ".md", ".html", ".yaml", ".yml", ".toml", ".cfg", ".txt", "")


def test_nothing_cites_a_document_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    hits = []
    for name in tracked.split():
        path = REPO / name
        if path.suffix not in TEXT or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if ELSEWHERE.search(line):
                hits.append(f"{name}:{number}: {line.strip()[:120]}")
    assert hits == [], "cite docs/ instead:\n" + "\n".join(hits)
