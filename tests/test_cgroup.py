"""Finding the run's cgroup: the paths read from /proc are taken only where they lead to a cgroup."""

from __future__ import annotations

from pathlib import Path

from edgetts.cgroup import _folder, _unescape


def test_mountinfo_escapes_are_decoded() -> None:
    assert _unescape(r"/mnt/with\040space\011tab") == "/mnt/with space\ttab"
    assert _unescape("/sys/fs/cgroup/memory") == "/sys/fs/cgroup/memory"


def test_only_a_folder_with_a_cgroup_s_own_files_is_used(tmp_path: Path) -> None:
    """Seen in review: a plain folder was taken for a group, the caps written as new files, and
    a ``0`` read back from its ``cgroup.procs`` would have been killed (the caller's process group)."""
    (tmp_path / "plain").mkdir()
    assert _folder("/", str(tmp_path), "/plain") is None
    (tmp_path / "group").mkdir()
    (tmp_path / "group" / "cgroup.procs").write_text("")
    assert _folder("/", str(tmp_path), "/group") == tmp_path / "group"


def test_a_path_outside_our_cgroup_namespace_is_not_followed(tmp_path: Path) -> None:
    # In a cgroup namespace, /proc/self/cgroup shows groups outside its root as /../x.
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "cgroup.procs").write_text("")
    assert _folder("/", str(tmp_path / "ns"), "/../x") is None
    assert _folder("/a", str(tmp_path), "/b/x") is None  # the mount shows another part of the tree
