"""Secrets a local task asks for as files, where the SDK has it read them (``/etc/flyte/secrets``, the one
mount path ``flyte.Secret`` allows), in a mount namespace of the task's own.

The host's ``/etc`` is not touched, and no value reaches a disk: the task's process (the launcher, or a
task a fork server forked, before it runs the task) leaves the engine's mount namespace, mounts a tmpfs
on an empty directory of the data directory (``scratch``: only in its namespace), writes the files there,
and lays an overlay over ``/etc`` whose top layer adds ``flyte/secrets`` (mounts under ``/etc``, such as a
container's resolv.conf, are bound back on top). The task's writes to ``/etc`` land in the tmpfs too and
end with it. The scratch mount is then detached, so the task sees an empty directory there. As root it
takes a mount namespace; otherwise a user namespace that maps only its own ids (so it stays who it was),
where the kernel allows unprivileged ones.

Standard library only: the launcher (run with -I -S) and the fork server load this file by path.

    python -I -S secret_mounts.py --probe SCRATCH     (exit 0: this machine can; else the reason, on stderr)
"""

from __future__ import annotations

import ctypes
import os
import sys

SECRETS_DIR = "/etc/flyte/secrets"
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 8, 4096, 16384, 1 << 18
MNT_DETACH = 2
TMPFS_OPTIONS = "mode=0700,size=16m"  # secrets, and what the task writes to /etc
PROBE_FILE = "taskdeck-probe"


class MountError(OSError):
    pass


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise MountError(errno, f"{what}: {os.strerror(errno)}")


def _mount(libc, source: str, target: str, fstype: str | None, flags: int, data: str | None, what: str) -> None:
    _check(libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                      data.encode() if data else None), what)


def _enter_namespace(libc) -> None:
    """A mount namespace of our own: directly as root, else inside a user namespace mapping our own ids."""
    if os.geteuid() == 0:
        _check(libc.unshare(CLONE_NEWNS), "cannot make a mount namespace")
        return
    uid, gid = os.geteuid(), os.getegid()
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "cannot make a user and mount namespace")
    for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                       ("/proc/self/gid_map", f"{gid} {gid} 1")):
        with open(path, "w") as f:
            f.write(text)


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are octal escapes there."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts_under(directory: str) -> list[str]:
    """Mount points strictly under ``directory``, outermost first, from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point.startswith(directory.rstrip("/") + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"))


def _safe_relative(path: str) -> str:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise MountError(22, f"secret file name {path!r} is not a relative path of plain names")
    return path


def mount_secret_files(files: dict[str, str], scratch: str, etc: str = "/etc") -> None:
    """Make ``files`` (path under /etc/flyte/secrets → value) appear there for this process and the ones
    it starts; ``scratch``: an existing empty directory (mounted over only in the new namespace)."""
    os.makedirs(scratch, 0o700, exist_ok=True)
    libc = _libc()
    _enter_namespace(libc)
    _mount(libc, "none", "/", None, MS_REC | MS_PRIVATE, None, "cannot make the mounts private")
    _mount(libc, "tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, TMPFS_OPTIONS,
           f"cannot mount a tmpfs on {scratch}")
    layer, upper, work, stash = (os.path.join(scratch, d) for d in ("layer", "upper", "work", "stash"))
    secrets_dir = os.path.join(layer, os.path.relpath(SECRETS_DIR, "/etc"))
    for d in (upper, work, stash):
        os.mkdir(d, 0o700)
    os.chmod(upper, os.stat(etc).st_mode & 0o7777)  # the overlay's /etc takes its upper layer's mode
    os.makedirs(secrets_dir, 0o755)
    for name, value in files.items():
        target = os.path.join(secrets_dir, _safe_relative(name))
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    kept = []
    for i, point in enumerate(mounts_under(etc)):  # hidden by the overlay: keep them aside, bind them back
        aside = os.path.join(stash, str(i))
        if os.path.isdir(point):
            os.mkdir(aside)
        else:
            open(aside, "w").close()
        _mount(libc, point, aside, None, MS_BIND | MS_REC, None, f"cannot keep {point}")
        kept.append((aside, point))
    _mount(libc, "overlay", etc, "overlay", 0, f"lowerdir={layer}:{etc},upperdir={upper},workdir={work}",
           f"cannot lay the secrets over {etc}")
    for aside, point in kept:
        if os.path.lexists(point):
            _mount(libc, aside, point, None, MS_BIND | MS_REC, None, f"cannot bind {point} back")
    _check(libc.umount2(scratch.encode(), MNT_DETACH), f"cannot detach {scratch}")


def probe(scratch: str) -> None:
    """Mount a probe secret here (in a namespace that ends with this process) and read it back."""
    mount_secret_files({PROBE_FILE: "ok"}, scratch)
    with open(os.path.join(SECRETS_DIR, PROBE_FILE)) as f:
        if f.read() != "ok":
            raise MountError(5, "the probe secret reads back wrong")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--probe":
        sys.stderr.write("usage: secret_mounts.py --probe SCRATCH\n")
        sys.exit(2)
    try:
        probe(sys.argv[2])
    except OSError as exc:
        sys.stderr.write(f"{exc.strerror or exc}\n")
        sys.exit(1)
