"""A control group for one sandbox run: memory and process caps for everything the run starts.

rlimits cap each process: a candidate that forks gets ``processes`` x ``memory_mb`` in all, and
as root every run is ``nobody``, so concurrent runs share one process count. A cgroup caps the
run as a whole: all its processes together get ``memory_mb`` of memory (tmpfs files included)
and ``processes`` tasks, whoever they run as, and the kernel kills inside the group when the
memory runs out.

Linux only, and only where this process may make child groups: cgroup v2 where the memory and
pids controllers are delegated to our group's children (a systemd unit with ``Delegate=yes``, a
container with its own writable cgroup tree), or the v1 ``memory`` and ``pids`` hierarchies where
we may write (root, usually). Each controller is found on its own, v2 first. Where neither is
there, :func:`RunCgroup.create` makes a group for what is there and the sandbox reports the rest
as not capped (``Isolation.run_memory_cap`` / ``run_process_cap``).

The candidate cannot leave its group: moving a process needs write access to ``cgroup.procs``
files, which its read-only mounts, dropped capabilities and syscall filter keep from it.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids")


@dataclass(frozen=True)
class RunCgroup:
    """One run's groups: ``dirs`` maps each capped controller to its group's folder."""

    dirs: dict[str, Path]

    @classmethod
    def create(cls, memory_mb: int, processes: int, controllers: tuple[str, ...] = CONTROLLERS) -> RunCgroup:
        """Make the run's groups of ``controllers`` with their caps set; those it could only.

        A group made but unable to take its cap is removed and counts as not capped.
        """
        name = f"edgetts-sandbox-{os.getpid()}-{secrets.token_hex(4)}"
        made: dict[str, Path] = {}
        for controller in controllers:
            parent = _parent_for(controller)
            group = _make(parent / name) if parent is not None else None
            if group is None:
                continue
            try:
                _set_cap(group, controller, memory_mb, processes)
            except OSError:
                if group not in made.values():
                    _remove(group)
                continue
            made[controller] = group
        return cls(made)

    @property
    def memory(self) -> bool:
        return "memory" in self.dirs

    @property
    def pids(self) -> bool:
        return "pids" in self.dirs

    def add(self, pid: int) -> None:
        """Put ``pid`` (not yet started on the candidate) into every group of the run."""
        for group in set(self.dirs.values()):
            (group / "cgroup.procs").write_text(str(pid))

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
                if _remove(group) or time.monotonic() > deadline:
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


def _set_cap(group: Path, controller: str, memory_mb: int, processes: int) -> None:
    if controller == "pids":
        # +1: the bootstrap that waits on the candidate (its PID namespace's init) is in the
        # group too; the candidate's own count stays the Limits' ``processes``.
        (group / "pids.max").write_text(str(processes + 1))
        return
    limit = str(memory_mb * 1024 * 1024)
    if (group / "memory.max").exists():  # v2
        (group / "memory.max").write_text(limit)
        if (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0")
        return
    (group / "memory.limit_in_bytes").write_text(limit)
    if (group / "memory.memsw.limit_in_bytes").exists():  # swap accounting on: no swap either
        (group / "memory.memsw.limit_in_bytes").write_text(limit)


def _kill_all(group: Path) -> None:
    kill = group / "cgroup.kill"  # v2, Linux 5.14+
    if kill.exists():
        try:
            kill.write_text("1")
            return
        except OSError:
            pass
    for pid in _read_words(group / "cgroup.procs"):
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
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
        sep = fields.index("-")
        fstype = fields[sep + 1]
        if fstype in ("cgroup", "cgroup2"):
            options = set(fields[sep + 3].split(",")) if len(fields) > sep + 3 else set()
            mounts.append((fields[3], fields[4], fstype, options))
    return mounts


def _folder(mount_root: str, mount_point: str, group: str) -> Path | None:
    """Where ``group`` (a path in its hierarchy) shows under a mount of that hierarchy."""
    if mount_root != "/" and not (group == mount_root or group.startswith(mount_root + "/")):
        return None  # the mount shows a part of the tree that does not hold our group
    rel = group[len(mount_root) :] if mount_root != "/" else group
    path = Path(mount_point + rel)
    return path if path.is_dir() and os.access(path, os.W_OK) else None


def _v2_own_group() -> Path | None:
    group = _own_groups().get("")
    for root, point, fstype, _ in _mounts():
        if fstype == "cgroup2" and group is not None:
            return _folder(root, point, group)
    return None


def _v1_own_group(controller: str) -> Path | None:
    group = _own_groups().get(controller)
    for root, point, fstype, options in _mounts():
        if fstype == "cgroup" and controller in options and group is not None:
            return _folder(root, point, group)
    return None
