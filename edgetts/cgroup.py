"""A control group for one sandbox run: memory, process and CPU caps for everything it starts.

rlimits cap each process: a candidate that forks gets ``processes`` x ``memory_mb`` in all, and
as root every run is ``nobody``, so concurrent runs share one process count. A cgroup caps the
run as a whole: all its processes together get ``memory_mb`` of memory (tmpfs files included),
``processes`` tasks and ``cpu_cores`` of CPU (a program that forks busy workers cannot take every
core from the model decoding beside it), whoever they run as, and the kernel kills inside the
group when the memory runs out.

Linux only, and only where this process may make child groups with the controllers on: the v1
``memory`` and ``pids`` hierarchies where we may write (root, usually), or cgroup v2 where our
own group already hands memory and pids to its children (its ``cgroup.subtree_control`` lists
them: the root group, or one a supervisor prepared). v2 forbids that on a group that holds
processes, so a ``Delegate=yes`` unit or a container whose process sits in its own group gets
none: moving the caller's process into a leaf group is not a library's call to make. Each
controller is found on its own, v2 first; what is not found is reported as not capped
(``Isolation.run_memory_cap`` / ``run_process_cap``) and the rlimits stand in.

The candidate cannot leave its group: moving a process needs write access to ``cgroup.procs``
files, which its read-only mounts, dropped capabilities and syscall filter keep from it; it
gets its own cgroup namespace and sees no cgroup files (the sandbox hides ``/sys/fs/cgroup``).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("edgetts.sandbox")

CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000  # the scheduler's accounting period for the CPU cap (the kernel's default)
PREFIX = "edgetts-sandbox-"
STALE_S = 3600.0  # an empty run group this old was left by a process that died mid-run


@dataclass(frozen=True)
class RunCgroup:
    """One run's groups: ``dirs`` maps each capped controller to its group's folder."""

    dirs: dict[str, Path]

    @classmethod
    def create(
        cls, memory_mb: int, tasks: int, controllers: tuple[str, ...] = CONTROLLERS, cpu_cores: float = 1.0
    ) -> RunCgroup:
        """Make the run's groups of ``controllers`` with their caps set (``memory_mb`` in all,
        ``tasks`` processes and threads in all, ``cpu_cores`` of CPU time per second of wall
        time in all); those it could only.

        A group made but unable to take its cap is removed and counts as not capped.
        """
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        made: dict[str, Path] = {}
        for controller in controllers:
            parent = _parent_for(controller)
            if parent is None:
                continue
            _remove_stale(parent)
            group = _make(parent / name)
            if group is None:
                continue
            try:
                _set_cap(group, controller, memory_mb, tasks, cpu_cores)
            except OSError:
                if group not in made.values():
                    _remove(group)
                continue
            made[controller] = group
        return cls(made)

    def out_of_memory(self) -> bool:
        """The kernel killed a process of the run for its memory cap."""
        group = self.dirs.get("memory")
        if group is None:
            return False
        # v2: memory.events; v1: memory.oom_control (oom_kill since Linux 4.13).
        for file in ("memory.events", "memory.oom_control"):
            try:
                lines = (group / file).read_text().splitlines()
            except OSError:
                continue
            counts = dict(line.split() for line in lines if len(line.split()) == 2)
            return int(counts.get("oom_kill", 0)) > 0
        return False

    def close(self, timeout_s: float = 2.0) -> None:
        """Kill whatever is left in the run's groups and remove them."""
        deadline = time.monotonic() + timeout_s
        for group in set(self.dirs.values()):
            while True:
                _kill_all(group)
                if _remove(group):
                    break
                if time.monotonic() > deadline:
                    log.warning("sandbox: could not remove the run's cgroup %s (left for later)", group)
                    break
                time.sleep(0.01)  # killed processes are reaped before the group may go


def _parent_for(controller: str) -> Path | None:
    """The folder under which to make the run's group for ``controller``, or None."""
    v2 = _v2_own_group()
    if v2 is not None and controller in _read_words(v2 / "cgroup.subtree_control"):
        return v2
    return _v1_own_group(controller)


def _make(group: Path) -> Path | None:
    try:
        group.mkdir()
    except FileExistsError:
        return group  # the other controller's group on the same (v2) hierarchy
    except OSError:
        return None
    return group


def _set_cap(group: Path, controller: str, memory_mb: int, tasks: int, cpu_cores: float) -> None:
    if controller == "pids":
        _write(group / "pids.max", str(tasks))
        return
    if controller == "cpu":
        quota_us = max(1000, round(cpu_cores * CPU_PERIOD_US))
        if (group / "cpu.max").exists():  # v2
            _write(group / "cpu.max", f"{quota_us} {CPU_PERIOD_US}")
            return
        _write(group / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(group / "cpu.cfs_quota_us", str(quota_us))
        return
    limit = str(memory_mb * 1024 * 1024)
    if (group / "memory.max").exists():  # v2
        _write(group / "memory.max", limit)
        if (group / "memory.swap.max").exists():
            _write(group / "memory.swap.max", "0")
        return
    _write(group / "memory.limit_in_bytes", limit)
    if (group / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: no swap either
        _write(group / "memory.memsw.limit_in_bytes", limit)


def _write(path: Path, text: str) -> None:
    """Write a control file that must exist (no O_CREAT: a plain folder is no cgroup)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _remove_stale(parent: Path) -> None:
    """Remove run groups of ours left empty long ago (their server died mid-run)."""
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(PREFIX) and e.is_dir()]
    except OSError:
        return
    for entry in entries:
        group = Path(entry.path)
        try:
            old = time.time() - entry.stat().st_mtime > STALE_S
        except OSError:
            continue
        if old and not _read_words(group / "cgroup.procs"):
            _remove(group)


def _kill_all(group: Path) -> None:
    kill = group / "cgroup.kill"  # v2, Linux 5.14+
    if kill.exists():
        try:
            kill.write_text("1")
            return
        except OSError:
            pass
    for word in _read_words(group / "cgroup.procs"):
        pid = int(word) if word.isdigit() else 0
        if pid <= 1 or pid == os.getpid():  # never a process group (0), init, or ourselves
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _remove(group: Path) -> bool:
    try:
        group.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def _own_groups() -> dict[str, str]:
    """This process's group path per hierarchy: ``""`` for v2, each v1 controller by name."""
    groups: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return groups
    for line in lines:
        _, names, path = line.split(":", 2)
        for controller in names.split(",") if names else [""]:
            groups[controller] = path
    return groups


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, fstype, super options) of each cgroup mount, from mountinfo."""
    mounts = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype = fields[sep + 1] if len(fields) > sep + 1 else ""
        if fstype in ("cgroup", "cgroup2"):
            options = set(fields[sep + 3].split(",")) if len(fields) > sep + 3 else set()
            mounts.append((_unescape(fields[3]), _unescape(fields[4]), fstype, options))
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _folder(mount_root: str, mount_point: str, group: str) -> Path | None:
    """Where ``group`` (a path in its hierarchy) shows under a mount of that hierarchy."""
    if ".." in group.split("/"):
        return None  # outside our cgroup namespace's root: not ours to use
    if mount_root != "/" and not (group == mount_root or group.startswith(mount_root + "/")):
        return None  # the mount shows a part of the tree that does not hold our group
    rel = group[len(mount_root) :] if mount_root != "/" else group
    path = Path(mount_point + rel)
    if not (path / "cgroup.procs").is_file() or not os.access(path, os.W_OK):
        return None
    return path


def _v2_own_group() -> Path | None:
    group = _own_groups().get("")
    for root, point, fstype, _ in _mounts():
        if fstype == "cgroup2" and group is not None and (path := _folder(root, point, group)):
            return path
    return None


def _v1_own_group(controller: str) -> Path | None:
    group = _own_groups().get(controller)
    for root, point, fstype, options in _mounts():
        if fstype == "cgroup" and controller in options and group is not None:
            if path := _folder(root, point, group):
                return path
    return None
