"""Named credentials: what `healerd access` writes, and what the daemon's book accepts and refuses."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from healerd import access
from healerd.access import AccessBook, AccessError, Credential, Scope, grants

NOW = 1_800_000_000.0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "access.yaml"


def test_scopes_grant_what_they_include_and_nothing_beside() -> None:
    allowed = {(held, needed) for held in Scope for needed in Scope if grants(held, needed)}
    assert allowed == {
        (Scope.READ, Scope.READ),
        (Scope.OPERATE, Scope.READ),
        (Scope.OPERATE, Scope.OPERATE),
        (Scope.ADMIN, Scope.READ),
        (Scope.ADMIN, Scope.OPERATE),
        (Scope.ADMIN, Scope.ADMIN),
        (Scope.ADMIN, Scope.ALERTS),  # admin may do anything: the legacy token posts alerts, serves probes
        (Scope.ADMIN, Scope.CLUSTER),
        (Scope.ALERTS, Scope.ALERTS),
        (Scope.CLUSTER, Scope.CLUSTER),
    }


def test_an_added_token_is_accepted_and_a_wrong_one_refused(path: Path) -> None:
    token = access.add(path, "ci", Scope.OPERATE, now=NOW)
    other = access.add(path, "alertmanager", Scope.ALERTS, now=NOW)
    book = AccessBook(path)
    assert book.verify(token, NOW) == Credential("ci", Scope.OPERATE, NOW, None)
    assert book.verify(other, NOW) == Credential("alertmanager", Scope.ALERTS, NOW, None)
    assert token.startswith("hk_ci_") and len(token) == len("hk_ci_") + 43
    secret = token[-43:]
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    for bad in (
        token[:-43] + flipped,  # right name, wrong secret
        f"hk_alertmanager_{secret}",  # another credential's name with this one's secret
        f"hk_nobody_{secret}",
        token + "x",
        token[:-1],
        "",
        "hk_",
        "Bearer " + token,
        "é" * 200,
    ):
        assert book.verify(bad, NOW) is None, bad
    assert book.configured


def test_the_file_holds_no_token_and_is_readable_by_its_owner_only(path: Path) -> None:
    tokens = [access.add(path, f"user{i}", Scope.READ, now=NOW) for i in range(3)]
    access.revoke(path, "user0")
    text = path.read_text()
    assert "user1" in text and "scrypt" in text
    for token in tokens:
        for leak in (token, token[-43:], hashlib.sha256(token.encode()).hexdigest()):
            assert leak not in text
    assert path.stat().st_mode & 0o777 == 0o600


def test_names_follow_the_rule(path: Path) -> None:
    for good in ("a", "CI.deploy_2-b", "x" * 63, "9"):
        token = access.add(path, good, Scope.READ, now=NOW)
        assert AccessBook(path).verify(token, NOW) is not None
    for bad in ("", "-lead", ".hidden", "_x", "a b", "a/b", "x" * 64, "naïve", "token"):
        with pytest.raises(AccessError) as caught:
            access.add(path, bad, Scope.READ, now=NOW)
        assert "choose another name" in str(caught.value) or "1 to 63 letters" in str(caught.value)
    assert [r["name"] for r in access.listing(path, None)] == ["a", "CI.deploy_2-b", "x" * 63, "9"]


def test_a_taken_name_is_refused_with_the_way_out(path: Path) -> None:
    first = access.add(path, "ci", Scope.READ, now=NOW)
    with pytest.raises(AccessError, match="`healerd access revoke ci` first"):
        access.add(path, "ci", Scope.ADMIN, now=NOW)
    assert AccessBook(path).verify(first, NOW) == Credential("ci", Scope.READ, NOW, None)


def test_revoke_removes_only_the_named_credential(path: Path) -> None:
    gone = access.add(path, "old", Scope.ADMIN, now=NOW)
    kept = access.add(path, "new", Scope.ADMIN, now=NOW)
    assert access.revoke(path, "old") is True
    assert access.revoke(path, "old") is False
    assert access.revoke(path, "never-was") is False
    book = AccessBook(path)
    assert book.verify(gone, NOW) is None
    assert book.verify(kept, NOW) is not None


def test_expiry_is_checked_on_every_call_even_when_cached(path: Path) -> None:
    token = access.add(path, "temp", Scope.OPERATE, expires=NOW + 60, now=NOW)
    book = AccessBook(path)
    assert book.verify(token, NOW + 59.9) is not None
    assert book.verify(token, NOW + 59.9) is not None  # now cached
    assert book.verify(token, NOW + 60) is None
    assert book.verify(token, NOW + 86400) is None
    with pytest.raises(AccessError, match="in the future"):
        access.add(path, "late", Scope.READ, expires=NOW - 1, now=NOW)


def test_the_cache_forgets_a_revoked_credential_at_the_next_refresh(path: Path) -> None:
    token = access.add(path, "ci", Scope.OPERATE, now=NOW)
    book = AccessBook(path)
    assert book.verify(token, NOW) is not None  # cached from here on
    assert book.refresh() is False  # the file did not change
    access.revoke(path, "ci")
    assert book.verify(token, NOW) is not None  # not looked at yet: the daemon's watch does so every second
    assert book.refresh() is True
    assert book.verify(token, NOW) is None
    # the same name added again is a new secret: the old token, once cached under that name, stays refused
    new = access.add(path, "ci", Scope.OPERATE, now=NOW)
    book.refresh()
    assert book.verify(token, NOW) is None
    assert book.verify(new, NOW) is not None


async def test_watch_refuses_a_revoked_token_within_a_second(path: Path) -> None:
    token = access.add(path, "ci", Scope.ADMIN, now=NOW)
    book = AccessBook(path)
    task = asyncio.create_task(book.watch(1.0))
    try:
        await asyncio.sleep(0.05)
        assert book.verify(token, NOW) is not None
        access.revoke(path, "ci")
        start = time.monotonic()
        while book.verify(token, NOW) is not None:
            assert time.monotonic() - start < 1.2, "still accepted more than a second after the revocation"
            await asyncio.sleep(0.02)
        print(f"revoked token refused after {time.monotonic() - start:.2f}s")
        added = access.add(path, "next", Scope.READ, now=NOW)
        start = time.monotonic()
        while book.verify(added, NOW) is None:
            assert time.monotonic() - start < 1.2, "a new credential not accepted within a second"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_a_bad_file_is_logged_once_and_the_last_good_credentials_stay(path: Path) -> None:
    token = access.add(path, "ci", Scope.OPERATE, now=NOW)
    book = AccessBook(path)
    with capture_logs() as logs:
        path.write_text(path.read_text().replace("scope: operate", "scope: root"))  # a hand edit gone wrong
        assert book.refresh() is False
        assert book.refresh() is False
        assert book.verify(token, NOW) is not None
        path.write_text(": not yaml [")  # another bad version, another complaint
        assert book.refresh() is False
        assert book.verify(token, NOW) is not None
        path.unlink()
        token2 = access.add(path, "ci2", Scope.READ, now=NOW)
        assert book.refresh() is True
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 2
    assert "credentials[0]: scope 'root' is none of read, operate, admin, alerts, cluster" in errors[0]["error"]
    assert errors[0]["error"].startswith(f"{path}:4: credentials[0]")  # the line of the entry
    assert [e["event"] for e in logs].count("access file usable again") == 1
    assert book.verify(token, NOW) is None  # the good file that came back no longer has it
    assert book.verify(token2, NOW) is not None


def test_a_deleted_file_revokes_everything_and_a_bad_one_stops_the_start(path: Path) -> None:
    token = access.add(path, "ci", Scope.OPERATE, now=NOW)
    book = AccessBook(path)
    path.unlink()
    assert book.refresh() is True
    assert book.verify(token, NOW) is None
    assert not book.configured
    path.write_text("version: 2\ncredentials: []\n")
    with pytest.raises(AccessError, match="is not a healerd access file"):
        AccessBook(path)
    path.write_text("version: 1\ncredentials:\n  - {name: ci}\n")
    with pytest.raises(AccessError, match=r"access.yaml:3: credentials\[0\]: missing scope, created"):
        access.add(path, "other", Scope.READ)


def test_the_legacy_token_is_an_admin_credential_that_never_expires(path: Path) -> None:
    book = AccessBook(None, token="0123456789abcdef")
    assert book.configured
    assert book.verify("0123456789abcdef", NOW + 10 * 365 * 86400) == Credential("token", Scope.ADMIN, 0.0, None)
    assert book.verify("0123456789abcdeF", NOW) is None
    assert book.verify("", NOW) is None
    assert not AccessBook(None).configured
    assert not AccessBook(path).configured  # no file yet
    token = access.add(path, "ci", Scope.READ, now=NOW)
    both = AccessBook(path, token="0123456789abcdef")
    assert both.verify(token, NOW) is not None and both.verify("0123456789abcdef", NOW) is not None


def test_usage_is_saved_and_listed(path: Path, tmp_path: Path) -> None:
    usage = tmp_path / "access-usage.json"
    access.add(path, "ci", Scope.READ, now=NOW)
    access.add(path, "idle", Scope.READ, now=NOW)
    book = AccessBook(path, token="legacy", usage=usage)
    book.save_usage()
    assert not usage.exists()  # nothing used yet: nothing written
    book.used("ci", "10.0.0.7", NOW + 5)
    book.used("token", "127.0.0.1", NOW + 6)
    book.save_usage()
    rows = {r["name"]: r for r in access.listing(path, usage)}
    assert rows["ci"] == {
        "name": "ci",
        "scope": "read",
        "created": NOW,
        "expires": None,
        "last_used": NOW + 5,
        "last_from": "10.0.0.7",
    }
    assert rows["idle"]["last_used"] is None and rows["idle"]["last_from"] is None
    assert usage.stat().st_mode & 0o777 == 0o600
    # a restarted daemon keeps what it knew
    again = AccessBook(path, usage=usage)
    again.used("idle", "10.0.0.8", NOW + 9)
    again.save_usage()
    rows = {r["name"]: r for r in access.listing(path, usage)}
    assert (rows["ci"]["last_from"], rows["idle"]["last_from"]) == ("10.0.0.7", "10.0.0.8")


def test_concurrent_adds_lose_nothing(path: Path) -> None:
    errors: list[BaseException] = []

    def add(i: int) -> None:
        try:
            access.add(path, f"n{i}", Scope.READ, now=NOW)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r["name"] for r in access.listing(path, None)) == [f"n{i}" for i in range(6)]


def test_a_flood_of_bad_tokens_does_not_grow_memory(path: Path) -> None:
    token = access.add(path, "ci", Scope.OPERATE, now=NOW)
    book = AccessBook(path)
    book.verify(token, NOW)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(50_000):
            assert book.verify(f"hk_nobody{i}_{'x' * 43}", NOW) is None
        for i in range(10):  # a known name: each costs a full scrypt, and is not remembered either
            assert book.verify(f"hk_ci_{str(i) * 43}", NOW) is None
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"memory grew by {grown} bytes"


def test_verify_cost_cold_and_warm(path: Path) -> None:
    token = access.add(path, "ci", Scope.OPERATE, now=NOW)
    book = AccessBook(path)
    start = time.perf_counter()
    assert book.verify(token, NOW) is not None
    cold = time.perf_counter() - start
    rounds = 10_000
    start = time.perf_counter()
    for _ in range(rounds):
        book.verify(token, NOW)
    warm = (time.perf_counter() - start) / rounds
    print(f"verify: cold (scrypt n=2**14 r=8 p=1) {cold * 1000:.1f} ms, warm (cache) {warm * 1e6:.1f} µs")
    assert warm < 100e-6
    assert cold > 20 * warm  # the cache saves the scrypt


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), HEALERD_CONFIG="")
    return subprocess.run(
        [sys.executable, "-m", "healerd", "access", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def test_cli_add_list_revoke(tmp_path: Path) -> None:
    config = tmp_path / "healerd.yaml"
    config.write_text("daemon:\n  state_dir: ./state\n  access_file: creds/access.yaml\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "state").mkdir()
    file = tmp_path / "creds" / "access.yaml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    out = _cli("add", "ci", "--scope", "operate", "--expires", "90d", "-c", str(config), cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    token = next(word for word in out.stdout.split() if word.startswith("hk_ci_"))
    assert "added ci (scope operate, until " in out.stdout and str(file) in out.stdout
    assert "--token-file" in out.stdout and "shown only this once" in out.stdout
    assert token not in file.read_text()

    book = AccessBook(file, usage=tmp_path / "state" / "access-usage.json")
    credential = book.verify(token, time.time())
    assert credential is not None and credential.scope is Scope.OPERATE
    assert credential.expires is not None and abs(credential.expires - time.time() - 90 * 86400) < 60
    book.used("ci", "192.0.2.10", time.time())
    book.save_usage()

    again = _cli("add", "ci", "--scope", "read", "-c", str(config), cwd=elsewhere)
    assert again.returncode == 2 and "healerd access revoke ci" in again.stderr

    listed = _cli("list", "-c", str(config), cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["NAME", "SCOPE", "CREATED", "EXPIRES", "LAST", "USED", "FROM"]
    assert row.split()[:2] == ["ci", "operate"] and row.split()[-1] == "192.0.2.10"
    rows = json.loads(_cli("list", "--json", "--file", str(file), cwd=elsewhere).stdout)
    assert [(r["name"], r["scope"], r["last_from"]) for r in rows] == [("ci", "operate", None)]  # --file: no state

    revoked = _cli("revoke", "ci", "-c", str(config), cwd=elsewhere)
    assert revoked.returncode == 0 and "revoked ci" in revoked.stdout
    book.refresh()
    assert book.verify(token, time.time()) is None
    assert "no credentials in" in _cli("list", "-c", str(config), cwd=elsewhere).stdout
    twice = _cli("revoke", "ci", "-c", str(config), cwd=elsewhere)
    assert twice.returncode == 2 and "no credential named 'ci'" in twice.stderr

    bare = tmp_path / "bare.yaml"
    bare.write_text("daemon:\n  state_dir: ./state\n")
    unset = _cli("list", "-c", str(bare), cwd=elsewhere)
    assert unset.returncode == 2 and "sets no daemon.access_file" in unset.stderr
