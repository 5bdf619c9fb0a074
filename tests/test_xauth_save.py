"""Writing Xauthority files: atomic replace, 0600, planted symlinks, failures, libXau locks."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import stat
import subprocess
import sys
import time

from collections.abc import Iterator
from pathlib import Path

import pytest

from x11passthrough._xauth import files as _xauth_files
from x11passthrough.exceptions import XauthorityError, XauthorityLockError
from x11passthrough.xauth import (
    MIT_MAGIC_COOKIE_1,
    Family,
    XauthEntry,
    Xauthority,
    xauthority_lock,
)

from infra.ci import require_executables
from infra.processes import run_forked, sleeping, wait_until


def entry(number: str, tag: int = 1) -> XauthEntry:
    return XauthEntry(Family.LOCAL, b"host", number, MIT_MAGIC_COOKIE_1, bytes([tag]) * 16)


AUTH = Xauthority([entry("0"), entry("1", 2)])
OLD = Xauthority([entry("9", 9)])


def names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# Saving -------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o777])
def test_save_writes_mode_0600_and_nothing_else(tmp_path: Path, mask: int) -> None:
    path = tmp_path / "auth"
    with umask(mask):
        AUTH.save(path)
    assert path.read_bytes() == AUTH.dumps()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert names(tmp_path) == {"auth"}


def test_save_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    OLD.save(path)
    old_inode = path.stat().st_ino
    AUTH.save(str(path))
    assert Xauthority.load(path) == AUTH
    assert path.stat().st_ino != old_inode
    assert names(tmp_path) == {"auth"}


def test_save_replaces_a_symlink_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    path = tmp_path / "auth"
    path.symlink_to(target)
    AUTH.save(path)
    assert not path.is_symlink()
    assert path.read_bytes() == AUTH.dumps()
    assert target.read_bytes() == b"keep me"


def test_planted_symlinks_at_the_temporary_name_are_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "auth"
    OLD.save(path)
    target = tmp_path / "victim"
    target.write_bytes(b"precious")
    missing = tmp_path / "created-through-link"
    (tmp_path / "auth.tmp-planted1").symlink_to(target)
    (tmp_path / "auth.tmp-planted2").symlink_to(missing)
    given = iter(["planted1", "planted2", "free"])
    monkeypatch.setattr(_xauth_files, "_temp_name", lambda base: f"{base}.tmp-{next(given)}")
    caplog.set_level(logging.WARNING, logger="x11passthrough")

    AUTH.save(path)

    assert Xauthority.load(path) == AUTH
    assert target.read_bytes() == b"precious"
    assert not missing.exists()
    assert (tmp_path / "auth.tmp-planted1").readlink() == target
    assert (tmp_path / "auth.tmp-planted2").readlink() == missing
    assert names(tmp_path) == {"auth", "victim", "auth.tmp-planted1", "auth.tmp-planted2"}
    assert caplog.text.count("already taken") == 2


def test_all_temporary_names_taken_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "auth"
    OLD.save(path)
    (tmp_path / "auth.tmp-same").symlink_to(tmp_path / "nowhere")
    monkeypatch.setattr(_xauth_files, "_temp_name", lambda base: f"{base}.tmp-same")
    with pytest.raises(XauthorityError, match=f"temporary names in {tmp_path} were all taken"):
        AUTH.save(path)
    assert Xauthority.load(path) == OLD
    assert names(tmp_path) == {"auth", "auth.tmp-same"}


def test_failed_replace_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.mkdir()
    with pytest.raises(XauthorityError, match=f"cannot write the Xauthority file {path}: Is a"):
        AUTH.save(path)
    assert names(tmp_path) == {"auth"}
    assert list(path.iterdir()) == []


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    """A real write error: the file size limit (RLIMIT_FSIZE) in a forked child."""
    path = tmp_path / "auth"
    OLD.save(path)
    big = Xauthority([entry(str(n)) for n in range(2000)])

    def save_with_small_limit() -> str:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            big.save(path)
        except XauthorityError as exc:
            return str(exc)
        return "saved without error"

    message = run_forked(save_with_small_limit)
    assert message.startswith(f"cannot write the Xauthority file {path}: File too large")
    assert "left unchanged" in message
    assert Xauthority.load(path) == OLD
    assert names(tmp_path) == {"auth"}


def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "auth"
    with pytest.raises(XauthorityError, match=f"cannot create {path}-c .*{tmp_path / 'absent'}"):
        AUTH.save(path)
    with pytest.raises(XauthorityError, match="cannot create a temporary file in"):
        AUTH.save(path, lock=False)
    assert names(tmp_path) == set()


@pytest.mark.parametrize(
    ("path", "options", "message"),
    [
        ("", {}, "it must name a file"),
        ("dir/", {}, "it must name a file"),
        ("auth", {"retries": 0}, "lock_retries must be an int of at least 1"),
        ("auth", {"retries": 1.5}, "lock_retries must be an int of at least 1"),
        ("auth", {"wait": -1}, "lock_wait must be a number of seconds >= 0"),
        ("auth", {"dead": -1}, "lock_dead must be a number of seconds >= 0"),
    ],
)
def test_lock_options_are_checked(
    tmp_path: Path, path: str, options: dict[str, float], message: str
) -> None:
    with pytest.raises(XauthorityError, match=message), xauthority_lock(path, **options):  # type: ignore[arg-type]
        pass


# Locking ------------------------------------------------------------------------------


def test_lock_files_exist_while_held_and_go_away(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    creat, link = tmp_path / "auth-c", tmp_path / "auth-l"
    with xauthority_lock(path):
        assert creat.stat().st_ino == link.stat().st_ino
        assert stat.S_IMODE(creat.stat().st_mode) == 0o600
        AUTH.save(path, lock=False)
    assert names(tmp_path) == {"auth"}
    with pytest.raises(RuntimeError, match="inside"), xauthority_lock(path):
        raise RuntimeError("inside")
    assert names(tmp_path) == {"auth"}


def test_held_lock_times_out_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    OLD.save(path)
    creat, link = tmp_path / "auth-c", tmp_path / "auth-l"
    creat.touch()
    os.link(creat, link)
    with pytest.raises(XauthorityLockError) as info:
        AUTH.save(path, lock_retries=3, lock_wait=0.01)
    message = str(info.value)
    assert f"cannot lock the Xauthority file {path}" in message
    assert f"rm -f {creat} {link}" in message
    assert isinstance(info.value, XauthorityError)
    assert isinstance(info.value, TimeoutError)
    assert Xauthority.load(path) == OLD
    assert names(tmp_path) == {"auth", "auth-c", "auth-l"}
    assert creat.stat().st_ino == link.stat().st_ino


def test_timed_out_attempt_removes_its_own_creat_file(tmp_path: Path) -> None:
    """Only ``-l`` is held (e.g. half-way through an unlock): our ``-c`` must not stay."""
    path = tmp_path / "auth"
    (tmp_path / "auth-l").touch()
    with pytest.raises(XauthorityLockError):
        AUTH.save(path, lock_retries=2, lock_wait=0.01)
    assert names(tmp_path) == {"auth-l"}


def test_stale_lock_is_broken(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "auth"
    creat, link = tmp_path / "auth-c", tmp_path / "auth-l"
    creat.touch()
    os.link(creat, link)
    with pytest.raises(XauthorityLockError):
        AUTH.save(path, lock_retries=1, lock_dead=3600)
    wait_until(lambda: time.time() - creat.stat().st_ctime > 1, "the lock to be 1 s old")
    caplog.set_level(logging.WARNING, logger="x11passthrough")
    AUTH.save(path, lock_retries=1, lock_dead=1)
    assert "breaking the Xauthority lock" in caplog.text
    assert Xauthority.load(path) == AUTH
    assert names(tmp_path) == {"auth"}


def test_dead_zero_breaks_any_lock(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    (tmp_path / "auth-c").touch()
    os.link(tmp_path / "auth-c", tmp_path / "auth-l")
    AUTH.save(path, lock_retries=1, lock_dead=0)
    assert names(tmp_path) == {"auth"}


def test_creat_file_vanishing_before_link_is_retried_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process removes ``-c`` between our create and link (libXau: ENOENT, retry)."""
    path = tmp_path / "auth"
    real_link = os.link
    calls: list[str] = []

    def racing_link(source: str, destination: str) -> None:
        calls.append(source)
        if len(calls) == 1:
            os.remove(source)  # what a competing stale-lock breaker does
        real_link(source, destination)

    monkeypatch.setattr(os, "link", racing_link)
    with xauthority_lock(path, retries=1, wait=60):
        assert (tmp_path / "auth-l").exists()
    assert calls == [f"{path}-c", f"{path}-c"]
    assert names(tmp_path) == set()


def test_xauth_waits_for_our_lock(tmp_path: Path) -> None:
    """If xauth ignored our lock, its entry would be lost to our save; it must wait."""
    require_executables("xauth")
    path = tmp_path / "auth"
    OLD.save(path)
    with xauthority_lock(path):
        current = Xauthority.load(path)
        adder = subprocess.Popen(
            ["xauth", "-f", str(path), "add", "xauthhost/unix:5", ".", "55" * 16],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # xauth sleeps only between lock attempts: asleep, it has found our lock held.
        wait_until(lambda: sleeping(adder.pid), "xauth to wait for the lock", timeout=30)
        current.merge([entry("7", 7)]).save(path, lock=False)
    _, stderr = adder.communicate(timeout=60)
    assert adder.returncode == 0, stderr
    final = Xauthority.load(path)
    assert final.find(Family.LOCAL, b"xauthhost", "5") is not None
    assert final.find(Family.LOCAL, b"host", "7") == entry("7", 7)
    assert final.find(Family.LOCAL, b"host", "9") == entry("9", 9)
    assert names(tmp_path) == {"auth"}


# update -------------------------------------------------------------------------------


def test_update_merges_under_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    seen: list[bool] = []

    def change(auth: Xauthority) -> Xauthority:
        seen.append((tmp_path / "auth-l").exists())
        return auth.merge([entry("3", 3)])

    result = Xauthority.update(path, change)
    assert seen == [True]
    assert result == Xauthority.load(path) == Xauthority([entry("3", 3)])
    assert names(tmp_path) == {"auth"}


def test_update_without_change_does_not_write(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    assert len(Xauthority.update(path, lambda auth: auth)) == 0
    assert not path.exists()
    AUTH.save(path)
    inode = path.stat().st_ino
    assert Xauthority.update(path, lambda auth: auth.merge([entry("0")])) == AUTH
    assert path.stat().st_ino == inode


def test_update_rejects_a_bad_change(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    AUTH.save(path)
    with pytest.raises(XauthorityError, match="returned a list, not an Xauthority"):
        Xauthority.update(path, list)  # type: ignore[arg-type]
    assert Xauthority.load(path) == AUTH
    assert names(tmp_path) == {"auth"}


# Concurrency --------------------------------------------------------------------------

PYTHON_WORKER = """
import sys
from x11passthrough.xauth import Family, XauthEntry, Xauthority

path, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for number in range(count):
    new = XauthEntry(Family.LOCAL, tag.encode(), str(number), "MIT-MAGIC-COOKIE-1", bytes(16))
    Xauthority.update(path, lambda auth: auth.merge([new]), lock_wait=0.01, lock_retries=6000)
"""

XAUTH_WORKER = """
for number in $(seq 0 $(($3 - 1))); do
    xauth -f "$1" add "$2/unix:$number" . 00112233445566778899aabbccddeeff || exit 1
done
"""


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    """Four xauth loops and four Python read-merge-write loops on one file, at once."""
    require_executables("xauth")
    path = tmp_path / "auth"
    OLD.save(path)
    per_python, per_xauth = 6, 3
    workers = []
    for index in range(4):
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", PYTHON_WORKER, str(path), f"py{index}", str(per_python)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
        workers.append(
            subprocess.Popen(
                ["sh", "-c", XAUTH_WORKER, "sh", str(path), f"xa{index}", str(per_xauth)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    for worker in workers:
        _, stderr = worker.communicate(timeout=120)
        assert worker.returncode == 0, stderr.decode()
        assert b"lock" not in stderr, stderr.decode()
    final = Xauthority.load(path)
    expected = {(b"host", b"9")}
    expected |= {(f"py{w}".encode(), b"%d" % n) for w in range(4) for n in range(per_python)}
    expected |= {(f"xa{w}".encode(), b"%d" % n) for w in range(4) for n in range(per_xauth)}
    assert {(e.address, e.number) for e in final} == expected
    assert len(final) == len(expected)
    assert names(tmp_path) == {"auth"}
