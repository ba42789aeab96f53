"""Evidence bundles and symbolic links: healerd writes none, so one planted in `<state_dir>/forensics/` is never
followed, neither when a bundle is verified (a link to /dev/zero would be hashed forever) nor when it is listed
(the listing would stat files outside the state directory)."""

from __future__ import annotations

import os
from pathlib import Path

from healerd.remediation.forensics import listing, verify, write_bundle

INCIDENT = "01M80ABCDEFGHJKMNP"


def test_verify_reports_a_planted_link_instead_of_hashing_what_it_points_to(tmp_path: Path) -> None:
    root = tmp_path / "forensics"
    bundle = write_bundle(root, INCIDENT, {"console.log": "boot\n", "describe.json": {"id": "web-1"}})
    outside = tmp_path / "outside.json"
    outside.write_text('{"id": "web-1"}')
    (bundle / "describe.json").unlink()
    os.symlink(outside, bundle / "describe.json")
    assert verify(bundle) == ["describe.json is a symbolic link"]

    os.symlink(bundle, root / "01LINKEDBUNDLE")
    assert verify(root / "01LINKEDBUNDLE") == ["01LINKEDBUNDLE is a symbolic link, not a bundle healerd wrote"]


def test_the_listing_opens_nothing_through_a_link(tmp_path: Path) -> None:
    root = tmp_path / "forensics"
    bundle = write_bundle(root, INCIDENT, {"console.log": "boot\n"})
    (tmp_path / "secret").write_bytes(b"s" * 4321)
    os.symlink(tmp_path / "secret", bundle / "extra.log")
    found = listing(root, INCIDENT)
    assert found is not None and [(f["name"], f["bytes"]) for f in found["files"]] == [("console.log", 5)]

    os.symlink(bundle, root / "01LINKEDBUNDLE")
    (root / "01MANIFESTLINK").mkdir()
    os.symlink(bundle / "manifest.json", root / "01MANIFESTLINK" / "manifest.json")
    assert listing(root, "01LINKEDBUNDLE") is None
    assert listing(root, "01MANIFESTLINK") is None
    assert listing(root, "..") is None and listing(root, "nope") is None
