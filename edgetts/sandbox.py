"""Run untrusted Python (programs the policy wrote) in a contained child process.

Every call of :meth:`Sandbox.run` starts one fresh process, without a shell:

* a new temporary working directory, removed afterwards; an **empty environment** (nothing from
  the caller's environment, no secrets); stdin is ``/dev/null`` (reads see end of file);
* ``setrlimit`` limits: CPU seconds, address space, size of any one file written, number of
  processes, open files, no core files; a wall-clock timeout that kills the whole process group;
  stdout and stderr are read up to a cap and the process is killed when it prints more;
* the interpreter runs with ``-I -S`` (no user site, no ``PYTHON*`` variables, no site-packages:
  model-written code gets the standard library only).

What else is isolated depends on the OS (:meth:`Sandbox.isolation` reports what this machine gave):

* **Linux.** The child enters new network, mount, IPC and PID namespaces (``unshare``; a user
  namespace too when not root). No network: only a loopback device that is down. Every mount of
  the host is made read-only in the child's mount namespace (``mount_setattr``, or a remount of
  each mount on kernels before 5.12). ``/tmp``, ``/var/tmp``, ``/dev/shm`` and ``/run`` (the
  host's sockets and the tokens of its services) are then fresh tmpfs mounts, capped in size and
  in files, that vanish with the process; the working directory is ``/tmp/work`` in there. So
  files written never reach the disk and cannot fill it; nothing else can be written. ``/home``,
  ``/root``, ``/media``, ``/dev/pts`` and the user's home are hidden behind empty read-only mounts
  (keys, tokens, the user's terminal), and the standard library is bind-mounted read-only at a
  fixed place the candidate imports from. Then the candidate gets a root of its own
  (``pivot_root``): ``/usr``, ``/bin``, ``/sbin``, ``/lib*`` and ``/etc`` read-only, its own
  ``/tmp``, ``/var/tmp``, ``/run`` and ``/dev/shm``, a ``/dev`` of ``null``, ``zero``, ``full``,
  ``random``, ``urandom`` and ``tty``, and its ``/proc``; the caller's files, data and models are
  not there (where that root cannot be built, the masks stay and the report says so). The
  candidate is PID 1 of its own PID namespace with a fresh ``/proc``: it sees no other process,
  and when it ends (or is killed, or its parent dies) the kernel kills everything it forked (its
  parent-death signal is set after the uid change, which clears it, and the filter below refuses
  clearing it, so one that leaves the process group dies too). It runs with no capabilities and
  ``no_new_privs``, so it cannot undo the mounts, and a seccomp filter refuses the system calls
  that reach past them and the rlimits: SysV shared memory and message queues, ``memfd_create``,
  keyrings, new namespaces, mounts, ``connect`` and Unix sockets but stream and seqpacket (the
  host's services: D-Bus, ssh-agent, the journal), socket families other than Unix, IPv4 and IPv6,
  io_uring, ptrace, bpf. Machines other than x86_64 and aarch64 get no filter and count as weak.
  Running as root, the child drops to ``nobody`` (uid/gid 65534, no supplementary groups), because
  the kernel does not apply the process-count limit to root: after the drop it does, so a fork
  bomb stops at the limit. Run by another user, the candidate keeps that user's uid (the limit
  counts all of the user's processes) inside a user namespace whose capabilities it drops. The
  candidate's source runs as a module registered under its ``run_name`` (multiprocessing can
  pickle its functions). Where this process may make cgroups (:mod:`edgetts.cgroup`: root, or a
  delegated cgroup v2 tree), each run gets its own: its processes together get ``memory_mb``
  (files in its tmpfs mounts included), ``processes`` tasks and ``cpu_cores`` of CPU. Without
  one, memory is capped per process (``processes`` x ``memory_mb`` in all), and the process count
  is the uid's: as root every run is ``nobody``, so concurrent runs share it.
* **macOS.** rlimits and the timeout only: macOS does not enforce the address-space limit, and
  there is no network or file-system isolation (the candidate runs as the calling user and can
  write where the user can). This counts as *weak*.
* **Windows.** Not supported: there are no rlimits and the report pipe cannot be passed, so
  :meth:`Sandbox.run` always raises :class:`SandboxUnavailable` there (``allow_weak`` too).
* Linux without namespaces (a container that forbids ``unshare``): rlimits and the timeout, no
  network or file-system isolation; weak (the candidate could write wherever its user can, and
  signal the user's other processes). Before such a run the calling process makes itself
  undumpable (``PR_SET_DUMPABLE``), so that the candidate, running with the same uid, cannot read
  the caller's own environment or memory through ``/proc`` (a server's API key); what else the
  user can read stays readable (the launching shell's environment, a key file), and a side
  effect is that the caller leaves no core file and a debugger of its uid cannot attach.

A weak sandbox is refused (:class:`SandboxUnavailable`) unless the caller opts in with
``allow_weak=True`` (``--allow-weak-sandbox`` on the command line).

Pass or fail of each check is reported on a separate pipe, each line keyed by a random nonce the
candidate's source is never given, so a candidate that exits early (``sys.exit(0)``,
``os._exit(0)``) or prints text that looks like a report is a failure, not a pass. The checks run
in the candidate's own interpreter, though: code written to cheat can make them pass (a review
did it by replacing the harness's ``exec`` through ``__main__``). The sandbox contains what code
does to the machine; it does not make checks trustworthy against a program written to fool them.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Literal

from edgetts.cgroup import CONTROLLERS, RunCgroup

NOBODY = 65534


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot contain code on this machine and the caller did not opt in."""


# The least wall time a run is cut to by a deadline (Sandbox.within): an interpreter starts in a
# tenth of it.
MIN_RUN_S = 1.0


@dataclass(frozen=True)
class Limits:
    """What one candidate run may use."""

    wall_s: float = 10.0  # whole run, interpreter start included
    cpu_s: int = 10
    memory_mb: int = 1024  # address space (virtual memory) of each process
    file_mb: int = 16  # largest file it may write
    disk_mb: int = 32  # each tmpfs (working dir, /tmp) holds at most this much (Linux)
    processes: int = 16  # processes (threads count too) of the sandbox user
    open_files: int = 64
    output_kb: int = 256  # stdout + stderr kept; more than this kills the run
    check_s: float = 3.0  # each check (test) at most this long in wall time
    # CPU time per second of wall time, all the run's processes together (a cgroup; Linux where
    # one can be made): cpu_s caps each process, so forked busy workers could take every core
    cpu_cores: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.cpu_cores < float("inf"):  # NaN too: a cgroup quota must be a number
            raise ValueError(f"cpu_cores must be a positive number of cores, got {self.cpu_cores}")


@dataclass(frozen=True)
class Check:
    """One thing to run after the candidate's source: ``exec`` a test, or ``eval`` an expression
    whose value is reported (its ``repr``, with sets sorted and floats to 12 significant digits)."""

    code: str
    kind: Literal["exec", "eval"] = "exec"
    name: str = ""


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool  # ran without raising (an ``eval`` check "passes" when it returns)
    value: str | None = None  # an eval check's value as Check says, cut to 1000 characters
    error: str | None = None  # the exception, one line


@dataclass(frozen=True)
class RunResult:
    """How one candidate run ended. ``ok``: the source ran, every check was reported, the
    process exited by itself with status 0, within every limit."""

    ok: bool
    loaded: bool  # the candidate's source executed without raising
    error: str | None  # why not ok, one line (None when ok)
    checks: tuple[CheckResult, ...]
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    output_capped: bool
    seconds: float
    layers: dict = field(default_factory=dict, repr=False)  # isolation the child reported, cgroup caps

    @property
    def passed_all(self) -> bool:
        """Every check passed (and the run itself was ok)."""
        return self.ok and all(c.passed for c in self.checks)


@dataclass(frozen=True)
class Isolation:
    """What a probe run found this machine isolates (see the module docstring)."""

    platform: str
    rlimits: bool
    process_limit: bool  # the process-count limit binds: the candidate's uid is not root
    network: bool
    filesystem: bool
    pid_namespace: bool
    uid: int | None  # the uid candidates run as
    notes: tuple[str, ...] = ()
    read_only: bool = False  # the host's mounts are read-only to the candidate, and stay so
    syscall_filter: bool = False  # the seccomp filter of calls that reach past the rest
    run_memory_cap: bool = False  # a cgroup caps the memory of the whole run, not each process
    run_process_cap: bool = False  # a cgroup caps the run's processes, not the uid's
    run_cpu_cap: bool = False  # a cgroup caps the run's CPU (all processes), not only each one's
    own_root: bool = False  # a root of its own: none of the host's files but the system's

    @property
    def weak(self) -> bool:
        # Without a read-only file system the candidate may write wherever its user can
        # (a normal user's ~/.bashrc; nobody's world-writable folders); without the filter it
        # may fill memory no limit counts and reach services on the host's Unix sockets.
        return not (self.rlimits and self.process_limit and self.read_only and self.syscall_filter)

    def describe(self) -> str:
        yes = {True: "yes", False: "NO"}
        lines = [
            f"platform: {self.platform}",
            f"resource limits (CPU, memory, file size, processes, open files): {yes[self.rlimits]}",
            f"process-count limit binds (uid {self.uid}): {yes[self.process_limit]}",
            f"network cut off: {yes[self.network]}",
            f"file system: private tmpfs for /tmp (the working directory) and /run: {yes[self.filesystem]}",
            f"file system: the rest read-only, the candidate unable to undo it: {yes[self.read_only]}",
            f"file system: only the system's programs, libraries and /etc visible: {yes[self.own_root]}",
            f"own PID namespace: {yes[self.pid_namespace]}",
            f"system calls past these refused (seccomp): {yes[self.syscall_filter]}",
            f"memory capped for the whole run, not each process (cgroup): {yes[self.run_memory_cap]}",
            f"processes capped per run, not per user (cgroup): {yes[self.run_process_cap]}",
            f"CPU capped per run, not only per process (cgroup): {yes[self.run_cpu_cap]}",
            *self.notes,
        ]
        return "\n".join(lines)


# The child's first code, run as `python -I -S -c BOOTSTRAP CFG_FD REPORT_FD`. It reads its
# settings from a pipe (so the nonce never appears in argv or a file), builds the isolation,
# drops privileges, then runs the candidate and reports each check on the report pipe.
BOOTSTRAP = r"""
import os, sys, json
cfg_fd, rep_fd = int(sys.argv[1]), int(sys.argv[2])
with os.fdopen(cfg_fd, "rb") as f:
    cfg = json.loads(f.read())
nonce = cfg.pop("nonce")
def report(obj, _fd=rep_fd, _nonce=nonce, _dumps=json.dumps):
    os.write(_fd, (_nonce + " " + _dumps(obj) + "\n").encode())
layers = {"uid": os.getuid()}
PIVOT_CALLS = {"x86_64": (155, 166), "aarch64": (41, 39)}  # pivot_root, umount2: no libc wrappers
def setup():
    import ctypes, resource
    lim = cfg["limits"]
    linux = sys.platform.startswith("linux")
    libc = ctypes.CDLL(None, use_errno=True) if linux else None
    def unshare(flags):
        if libc.unshare(flags) != 0:
            raise OSError(ctypes.get_errno(), "unshare failed")
    def mount(src, dst, fstype, flags, data):
        if libc.mount(src, dst.encode(), fstype, flags, data) != 0:
            raise OSError(ctypes.get_errno(), "mount %s failed" % dst)
    def read_only_everywhere():
        class MountAttr(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint64) for n in ("set", "clr", "propagation", "userns_fd")]
        attr = MountAttr(1, 0, 0, 0)  # MOUNT_ATTR_RDONLY
        libc.syscall.restype = ctypes.c_long
        # mount_setattr(AT_FDCWD, "/", AT_RECURSIVE, ...): every mount at once (Linux 5.12+)
        if libc.syscall(ctypes.c_long(442), ctypes.c_int(-100), b"/", ctypes.c_uint(0x8000),
                        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))) == 0:
            return
        # Older kernels: remount each mount, repeating the flags a user namespace locks.
        import re
        kept = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048,
                "relatime": 0x200000}
        with open("/proc/self/mountinfo") as f:
            rows = [line.split() for line in f]
        for row in rows:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), row[4])
            flags = MS_BIND | MS_REMOUNT | MS_RDONLY
            for option in row[5].split(","):
                flags |= kept.get(option, 0)
            mount(None, point, None, flags, None)
    def close_kernel_doors():
        # A seccomp filter: system calls that reach past the mounts and rlimits fail with
        # EPERM. SysV shared memory and message queues, memfd (memory no rlimit counts), the
        # keyrings (shared with the caller), new namespaces and mounts (a tmpfs of its own has
        # no size cap), connect and Unix sockets but stream and seqpacket ones (services on the
        # host's sockets: ssh-agent, D-Bus, the journal), socket families but Unix, IPv4 and
        # IPv6 (vsock), io_uring (its operations pass no filter), ptrace, bpf, userfaultfd,
        # perf_event_open, and clearing the parent-death signal. clone3 says ENOSYS, so libc
        # falls back to clone, whose namespace flags the filter can read.
        tables = {  # audit arch, calls refused, then clone, clone3, socket, socketpair, prctl
            "x86_64": (0xC000003E, (29, 68, 248, 249, 250, 272, 308, 165, 166, 155, 42, 101,
                                    321, 323, 298, 319, 425, 426, 427, 428, 429, 430, 431, 432,
                                    433, 442), 56, 435, 41, 53, 157),
            "aarch64": (0xC00000B7, (194, 186, 217, 218, 219, 97, 268, 40, 39, 41, 203, 117,
                                     280, 282, 241, 279, 425, 426, 427, 428, 429, 430, 431, 432,
                                     433, 442), 220, 435, 198, 199, 167),
        }
        machine = os.uname().machine
        if machine not in tables:
            return False
        arch, refused, clone, clone3, sock, sockpair, prctl = tables[machine]
        LD, AND, JEQ, JGE, JSET, RET = 0x20, 0x54, 0x15, 0x35, 0x45, 0x06
        ALLOW, EPERM, ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
        ARG0, ARG1 = 16, 24  # the low 32 bits of the first two arguments in seccomp_data
        code = []  # (opcode, k, label if true, label if false: None = the next), or a label
        def op(opcode, k, yes=None, no=None):
            code.append((opcode, k, yes, no))
        op(LD, 4); op(JEQ, arch, None, "deny"); op(LD, 0)
        if machine == "x86_64":
            op(JGE, 0x40000000, "deny")  # the x32 numbering of the same calls
        for nr in refused:
            op(JEQ, nr, "deny")
        op(JEQ, clone3, "enosys"); op(JEQ, clone, "clone"); op(JEQ, sock, "socket")
        op(JEQ, sockpair, "socket"); op(JEQ, prctl, "prctl"); op(RET, ALLOW)
        code.append("clone"); op(LD, ARG0); op(JSET, 0x7E020000, "deny"); op(RET, ALLOW)
        code.append("socket"); op(LD, ARG0); op(JEQ, 2, "allow"); op(JEQ, 10, "allow")
        # Unix: stream and seqpacket only (the kernel makes SOCK_RAW a datagram socket)
        op(JEQ, 1, None, "deny"); op(LD, ARG1); op(AND, 0xF); op(JEQ, 1, "allow"); op(JEQ, 5, "allow")
        op(RET, EPERM)
        code.append("prctl"); op(LD, ARG0); op(JEQ, 1, "deny"); op(RET, ALLOW)  # PR_SET_PDEATHSIG
        code.append("allow"); op(RET, ALLOW)
        code.append("deny"); op(RET, EPERM)
        code.append("enosys"); op(RET, ENOSYS)
        at, index = {}, 0
        for item in code:
            if isinstance(item, str):
                at[item] = index
            else:
                index += 1
        prog = []
        for item in [c for c in code if not isinstance(c, str)]:
            opcode, k, yes, no = item
            here = len(prog)
            prog.append((opcode, at[yes] - here - 1 if yes else 0, at[no] - here - 1 if no else 0, k))
        class Filter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                        ("k", ctypes.c_uint32)]
        class Program(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]
        filters = (Filter * len(prog))(*[Filter(*ins) for ins in prog])
        program = Program(len(prog), filters)
        if libc.prctl(22, 2, ctypes.byref(program), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")
        return True
    def build_new_root(size):
        # A root of its own: the system's programs and libraries and /etc (read-only binds),
        # fresh /tmp (this run's), /var/tmp, /run and /dev/shm, a /dev of the harmless nodes.
        # Nothing else of the host is there: the caller's files, data and models, /opt, /srv,
        # /var, /mnt, /sys. Entered by pivot_into once /proc is mounted in it. Raises OSError
        # where it cannot be built.
        if os.uname().machine not in PIVOT_CALLS:
            raise OSError("no pivot_root number for %s" % os.uname().machine)
        top = "/run/.root"
        os.mkdir(top)
        mount(b"tmpfs", top, b"tmpfs", MS_NOSUID | MS_NODEV, b"size=64k,nr_inodes=64,mode=755")
        for d in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"):
            if os.path.islink(d):  # merged /usr: /bin -> usr/bin
                os.symlink(os.readlink(d), top + d)
            elif os.path.isdir(d):
                os.mkdir(top + d)
                mount(d.encode(), top + d, None, MS_BIND | MS_REC, None)
        for d in ("/tmp", "/var", "/var/tmp", "/run", "/proc", "/dev"):
            os.mkdir(top + d)
        mount(b"/tmp", top + "/tmp", None, MS_BIND | MS_REC, None)  # with the stdlib's binds
        for d in ("/var/tmp", "/run"):
            mount(b"tmpfs", top + d, b"tmpfs", MS_NOSUID | MS_NODEV, size)
        os.mkdir(top + "/run/lock")
        os.chmod(top + "/run/lock", 0o1777)
        dev = top + "/dev"
        # no nodev here: the nodes are binds of the host's, which keep their own mount's flags
        mount(b"tmpfs", dev, b"tmpfs", MS_NOSUID | MS_NOEXEC, b"size=64k,nr_inodes=64,mode=755")
        for node in ("null", "zero", "full", "random", "urandom", "tty"):
            if os.path.exists("/dev/" + node):
                open(dev + "/" + node, "w").close()
                mount(("/dev/" + node).encode(), dev + "/" + node, None, MS_BIND, None)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, dev + "/" + name)
        os.mkdir(dev + "/shm")
        mount(b"tmpfs", dev + "/shm", b"tmpfs", MS_NOSUID | MS_NODEV, size)
        for d in (top, dev):  # their own files stay as made (an unprivileged owner could write)
            extra = MS_NODEV if d == top else MS_NOEXEC
            mount(None, d, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | extra, None)
        return top
    def pivot_into(top):
        # False where pivot_root fails (a chroot, an initramfs root): it has changed nothing, so
        # the masked tree stays as it is. A failure after it ends the setup.
        pivot_root, umount2 = PIVOT_CALLS[os.uname().machine]
        os.chdir(top)
        libc.syscall.restype = ctypes.c_long
        if libc.syscall(ctypes.c_long(pivot_root), b".", b".") != 0:
            layers["own_root_error"] = "pivot_root failed: %s" % os.strerror(ctypes.get_errno())
            os.chdir("/tmp/work")
            return False
        if libc.syscall(ctypes.c_long(umount2), b".", ctypes.c_int(2)) != 0:  # MNT_DETACH
            raise OSError(ctypes.get_errno(), "detaching the old root failed")
        os.chdir("/tmp/work")
        return True
    def drop_capabilities():
        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class Data(ctypes.Structure):
            _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]
        none = (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3 takes two of them, all zero here
        if libc.capset(ctypes.byref(Header(0x20080522, 0)), none) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")
    if linux:
        # Die with the caller (a server killed mid-run): the candidate, the PID namespace's
        # init below, dies with this process in turn, and nothing outlives the run.
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL
        if os.getppid() != cfg["caller_pid"]:
            os._exit(70)
    layers["cgroup"] = []
    for controller, procs in cfg["cgroups"].items():  # joined before anything else starts
        try:
            fd = os.open(procs, os.O_WRONLY)  # no O_CREAT: only a cgroup's own file will do
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError:
            if cfg["cgroups_required"]:  # the probe found them: a run must not do without
                raise
            continue
        layers["cgroup"].append(controller)
    root = os.getuid() == 0
    drop = root and cfg["drop_uid"]
    layers["uid"] = cfg["drop_uid"] if drop else os.getuid()
    parent_alive = None  # with namespaces: a pipe that reads end of file once the parent is gone
    if linux and cfg["namespaces"]:
        NEWNS, NEWUSER, NEWPID, NEWNET, NEWIPC = 0x20000, 0x10000000, 0x20000000, 0x40000000, 0x8000000
        NEWCGROUP = 0x2000000  # its own cgroup root: the host's layout stays out of /proc/self/cgroup
        uid, gid = os.getuid(), os.getgid()
        unshare(NEWNS | NEWNET | NEWIPC | NEWPID | NEWCGROUP | (0 if root else NEWUSER))
        if not root:
            # The new user namespace gives the capabilities to mount, dropped before the
            # candidate runs. Our own uid inside, not root: an exec grants it nothing.
            with open("/proc/self/setgroups", "w") as f: f.write("deny")
            with open("/proc/self/uid_map", "w") as f: f.write("%d %d 1" % (uid, uid))
            with open("/proc/self/gid_map", "w") as f: f.write("%d %d 1" % (gid, gid))
        layers["network"] = True
        MS_REC, MS_PRIVATE, MS_BIND, MS_RDONLY, MS_REMOUNT = 0x4000, 0x40000, 0x1000, 1, 0x20
        MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
        mount(None, "/", None, MS_REC | MS_PRIVATE, None)  # nothing propagates back to the host
        try:
            read_only_everywhere()  # before the tmpfs masks: those stay writable
            layers["read_only"] = True
        except OSError as exc:
            layers["read_only_error"] = str(exc)
        # nr_inodes: empty files cost kernel memory no size cap counts
        size = ("size=%dm,nr_inodes=%d,mode=1777" % (lim["disk_mb"], lim["disk_mb"] * 256)).encode()
        # The world-writable places, and /run (the host's sockets, tokens of its services)
        for d in ("/tmp", "/var/tmp", "/dev/shm", "/run"):
            if os.path.isdir(d):
                mount(b"tmpfs", d, b"tmpfs", MS_NOSUID | MS_NODEV, size)
        if os.path.isdir("/run"):
            os.mkdir("/run/lock")
            os.chmod("/run/lock", 0o1777)
        # The working directory: a path that exists in here (os.getcwd(), sqlite, abspath)
        os.mkdir("/tmp/work")
        os.chmod("/tmp/work", 0o1777)
        os.chdir("/tmp/work")
        # The standard library may live where the candidate cannot read (a pyenv under /root
        # for nobody) or where it is masked below (under /home): show it read-only at a fixed
        # place and import from there.
        moved = {}  # where each folder of sys.path is shown
        os.mkdir("/tmp/.stdlib")
        for i, p in enumerate(sys.path):
            if os.path.isdir(p):
                dst = "/tmp/.stdlib/%d" % i
                os.mkdir(dst)
                mount(p.encode(), dst, None, MS_BIND | MS_REC, None)
                if libc.mount(None, dst.encode(), None, MS_BIND | MS_REMOUNT | MS_RDONLY, None) != 0:
                    # A user namespace may not remount (locked flags): the copy of a read-only
                    # mount is read-only already.
                    if not os.statvfs(dst).f_flag & os.ST_RDONLY:
                        raise OSError(ctypes.get_errno(), "read-only bind of %s failed" % p)
                moved[p] = dst
        # Where people keep what is theirs (keys, tokens, the user's own sockets and terminal)
        # is hidden behind empty read-only mounts: the candidate may run as that user.
        import pwd
        try:
            home = [pwd.getpwuid(os.getuid()).pw_dir]
        except KeyError:
            home = []
        empty = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        # /sys/fs/cgroup: the host's groups and every concurrent run's use of memory.
        for d in ("/home", "/root", "/media", "/dev/pts", "/sys/fs/cgroup", *home):
            if d != "/" and os.path.isdir(d):
                mount(b"tmpfs", d, b"tmpfs", empty, b"size=4k,mode=555")
        layers["filesystem"] = True
        try:
            top = build_new_root(size)
        except OSError as exc:  # the masks above stay: the rest of the host is readable
            top = None
            layers["own_root_error"] = str(exc)
        # PID namespace: the child forked now is its PID 1; when it ends, all it forked dies.
        parent_alive, parent_alive_w = os.pipe()
        pid = os.fork()
        if pid:
            os.close(rep_fd)
            os.close(parent_alive)
            _, status = os.waitpid(pid, 0)
            os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
        os.close(parent_alive_w)
        # It sees only its own processes. Mounted before the pivot: in a user namespace the
        # kernel lets a new proc be mounted only where the host's is still in view.
        mount(b"proc", (top or "") + "/proc", b"proc", MS_NOSUID | MS_NODEV, None)
        if top and pivot_into(top):
            layers["own_root"] = True
        elif top:  # still in the masked tree: its own /proc there too
            mount(b"proc", "/proc", b"proc", MS_NOSUID | MS_NODEV, None)
        layers["pid_namespace"] = True
        if moved:
            # Packages imported already (collections, encodings) find submodules via __path__.
            def remap(p):
                for old, new in moved.items():
                    if p == old or p.startswith(old + "/"):
                        return new + p[len(old):]
                return p
            for mod in list(sys.modules.values()):
                if isinstance(getattr(mod, "__path__", None), list):
                    mod.__path__[:] = [remap(p) for p in mod.__path__]
            sys.path[:] = list(moved.values())
            sys.path_importer_cache.clear()
    MB = 1024 * 1024
    # A pids cgroup counts this run alone; the rlimit counts the uid's processes everywhere
    # (for nobody, every concurrent run's), so it stands in only without one.
    nproc = None if "pids" in layers["cgroup"] else lim["processes"]
    for name, value in (("RLIMIT_CPU", lim["cpu_s"]), ("RLIMIT_FSIZE", lim["file_mb"] * MB),
                        ("RLIMIT_NPROC", nproc), ("RLIMIT_NOFILE", lim["open_files"]),
                        ("RLIMIT_CORE", 0), ("RLIMIT_AS", lim["memory_mb"] * MB)):
        if hasattr(resource, name) and value is not None:
            resource.setrlimit(getattr(resource, name), (value, value))
    layers["rlimits"] = True
    if drop:  # root is exempt from RLIMIT_NPROC: run as an unprivileged user instead
        os.setgroups([])
        os.setgid(cfg["drop_uid"])
        os.setuid(cfg["drop_uid"])  # from root to another uid: every capability goes too
        if os.getuid() == 0 or os.geteuid() == 0:
            raise OSError("could not drop root")
    if parent_alive is not None:
        # It dies with the bootstrap, its parent, killed at the timeout as one process group
        # with it: a candidate that leaves the group (setsid) must not outlive the run. Set
        # here, after the uid change, which clears it; if the parent died before, end now.
        import select
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL
        if select.select([parent_alive], [], [], 0)[0]:
            os._exit(70)
        os.close(parent_alive)
    if linux and cfg["namespaces"]:
        # No capabilities left to unmount or remount with; no exec (setuid file, file
        # capabilities) can bring any back.
        drop_capabilities()
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        layers["no_capabilities"] = True
        layers["syscall_filter"] = close_kernel_doors()
try:
    setup()
except BaseException as exc:
    report({"setup_error": "%s: %s" % (type(exc).__name__, exc)})
    os._exit(70)
report({"layers": layers})
import builtins, signal, traceback
def one_line(exc):
    return ("%s: %s" % (type(exc).__name__, exc))[:500]
class CheckTimeout(BaseException):
    pass
alarm = {"rang": False}  # a check that swallows CheckTimeout (a bare except) still timed out
def on_alarm(signum, frame):
    alarm["rang"] = True
    raise CheckTimeout("check took longer than %gs" % cfg["check_s"])
signal.signal(signal.SIGALRM, on_alarm)
class NotShown(Exception):
    pass
def shown(value):
    # The value's repr, alike for values that behave alike: a set's items sorted (their order
    # follows string hashing, random per process) and floats to 12 significant digits (0.1 + 0.2
    # and 0.3 are one behaviour). Exact built-in types only: a subclass keeps its own repr. A
    # value that holds itself, or more than 10,000 parts in all, is shown by repr as it is.
    try:
        return canonical(value, set(), [10000])
    except (NotShown, RecursionError):
        return repr(value)
def canonical(value, path, budget):
    kind = type(value)
    if kind is float:
        return repr(float("%.12g" % value))
    if kind not in (list, tuple, set, frozenset, dict):
        return repr(value)
    budget[0] -= len(value) + 1
    if budget[0] < 0 or id(value) in path:
        raise NotShown()
    path.add(id(value))
    if kind is dict:
        pairs = value.items()
        items = ["%s: %s" % (canonical(k, path, budget), canonical(v, path, budget)) for k, v in pairs]
    else:
        items = [canonical(x, path, budget) for x in value]
    path.discard(id(value))
    if kind is dict:
        return "{%s}" % ", ".join(items)
    if kind is list:
        return "[%s]" % ", ".join(items)
    if kind is tuple:
        return "(%s)" % (items[0] + "," if len(items) == 1 else ", ".join(items))
    inner = "{%s}" % ", ".join(sorted(items)) if items else ""
    if kind is set:
        return inner or "set()"
    return "frozenset(%s)" % inner
# The candidate runs as a module of its own, registered under its name: pickle finds its
# functions (multiprocessing), and `import __main__` gives it itself, not the harness.
import types
harness = sys.modules["__main__"]  # still referenced: its globals are the code running here
candidate = types.ModuleType(cfg["run_name"])
sys.modules[cfg["run_name"]] = candidate
ns = candidate.__dict__
ns["__builtins__"] = builtins
source, checks = cfg["source"], cfg["checks"]
del cfg["source"], cfg["checks"]
def finish(status):
    # what a program printed last is still in the buffers: os._exit would drop it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(status)
try:
    code = compile(source, "<candidate>", "exec")
    try:
        exec(code, ns)
    except SystemExit as exc:
        if exc.code not in (None, 0):  # sys.exit() or sys.exit(0) ends a program as it should
            raise
    report({"loaded": True})
except BaseException as exc:
    report({"loaded": False, "error": one_line(exc)})
    traceback.print_exc()
    finish(1)
for i, chk in enumerate(checks):
    out = {"check": i}
    alarm["rang"] = False
    try:
        signal.setitimer(signal.ITIMER_REAL, cfg["check_s"])
        try:
            if chk["kind"] == "eval":
                value = eval(compile(chk["code"], "<check %d>" % i, "eval"), ns)
                digits = getattr(sys, "get_int_max_str_digits", lambda: None)()
                if digits is not None:  # a value the call returned is shown, however long
                    sys.set_int_max_str_digits(0)
                try:
                    out["value"] = shown(value)[:1000]
                finally:
                    if digits is not None:
                        sys.set_int_max_str_digits(digits)
            else:
                exec(compile(chk["code"], "<check %d>" % i, "exec"), ns)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if alarm["rang"]:
            raise CheckTimeout("check took longer than %gs" % cfg["check_s"])
        out["passed"] = True
    except BaseException as exc:
        out["passed"] = False
        out["error"] = one_line(exc)
    report(out)
sys.stdout.flush()  # what it printed so far is kept, whatever its threads do next
try:  # as the interpreter ends, for at most a check's time: join its threads, run its atexit
    signal.setitimer(signal.ITIMER_REAL, cfg["check_s"])
    try:
        import atexit, threading
        getattr(threading, "_shutdown", lambda: None)()
        atexit._run_exitfuncs()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
except BaseException:
    pass
report({"done": True})
finish(0)
"""


def _hide_caller_memory() -> None:
    """Make this process undumpable (Linux): its ``/proc/<pid>/environ``, memory and file
    descriptors then belong to root, so a candidate run without namespaces, with this process's
    uid, cannot read the secrets in its environment. (Its launcher's, a shell's say, and the
    user's files stay readable: weak mode is weak.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, 0
            raise SandboxUnavailable(f"prctl(PR_SET_DUMPABLE) failed (errno {ctypes.get_errno()})")


_probe_lock = threading.Lock()
_probe_cache: dict[tuple, tuple[Isolation, bool]] = {}


@dataclass(frozen=True)
class Sandbox:
    """Runs candidates under :class:`Limits`; refuses a weak sandbox unless ``allow_weak``.

    ``namespaces`` and ``drop_uid`` are on by default where they apply; turning them off is
    for tests of the refusal logic.
    """

    limits: Limits = field(default_factory=Limits)
    allow_weak: bool = False
    python: str = sys.executable
    namespaces: bool = True
    drop_uid: int = NOBODY

    def within(self, left_s: float) -> Sandbox:
        """This sandbox with its wall limit cut to ``left_s`` (what is left of a search's
        deadline), but not under :data:`MIN_RUN_S`: a run never carries a search far past its
        deadline, and one whose deadline went on writing programs still runs one."""
        wall_s = max(left_s, MIN_RUN_S)
        if wall_s >= self.limits.wall_s:
            return self
        return replace(self, limits=replace(self.limits, wall_s=wall_s))

    # -- isolation -----------------------------------------------------------------------------

    def isolation(self) -> Isolation:
        """What this machine isolates, probed once per settings (one tiny run, cached)."""
        return self._isolation_and_mode()[0]

    def _use_namespaces(self) -> bool:
        return self.namespaces and sys.platform.startswith("linux")

    def _probe(self) -> tuple[Isolation, bool]:
        notes: list[str] = []
        if os.name == "nt":
            note = "Windows is not supported: no resource limits, no way to pass the report pipe"
            return Isolation("windows", False, False, False, False, False, None, (note,)), False
        namespaces = self._use_namespaces()
        result = self._spawn("import fractions, typing\n", (), "__main__", namespaces=namespaces)
        if namespaces and result.error and result.error.startswith("sandbox setup failed"):
            notes.append(f"namespaces unavailable ({result.error}); limits only")
            namespaces = False
            result = self._spawn("import fractions, typing\n", (), "__main__", namespaces=False)
        layers = result.layers
        if layers.get("own_root_error"):
            notes.append(f"no root of its own (the host's files are readable): {layers['own_root_error']}")
        if layers.get("read_only_error"):
            notes.append(f"could not make the file system read-only: {layers['read_only_error']}")
        if not result.ok:
            tail = result.stderr.strip().splitlines()[-1:] or [""]
            notes.append(f"probe run failed: {result.error} {tail[0]}")
        capped = set(layers.get("cgroup", ()))
        if "cgroup" in layers and "memory" not in capped:  # the setup got as far as the cgroups
            notes.append("no cgroup memory controller to use: each process gets memory_mb")
        if "cgroup" in layers and "pids" not in capped:
            notes.append("no cgroup pids controller to use: processes counted per uid, across runs")
        if "cgroup" in layers and "cpu" not in capped:
            notes.append("no cgroup cpu controller to use: each process gets cpu_s, the run any cores")
        uid = layers.get("uid")
        if not namespaces and uid == os.getuid() and sys.platform.startswith("linux"):
            notes.append(
                "the candidate runs with this process's uid: it can signal this user's processes and "
                "read what they can (a launching shell's environment, an API key file); this process "
                "is made undumpable before each run, so its own environment and memory stay unread"
            )
        if sys.platform == "darwin":
            notes.append("macOS does not enforce the address-space limit: memory is not capped")
        return Isolation(
            platform=sys.platform,
            rlimits=bool(layers.get("rlimits")) and result.ok,
            # Also with a pids cgroup: a root candidate may write what root may (/proc/sys).
            process_limit=uid is not None and uid != 0,
            network=bool(layers.get("network")),
            filesystem=bool(layers.get("filesystem")),
            pid_namespace=bool(layers.get("pid_namespace")),
            uid=uid,
            notes=tuple(notes),
            read_only=bool(layers.get("read_only")) and bool(layers.get("no_capabilities")),
            syscall_filter=bool(layers.get("syscall_filter")),
            run_memory_cap="memory" in capped,
            run_process_cap="pids" in capped,
            run_cpu_cap="cpu" in capped,
            own_root=bool(layers.get("own_root")),
        ), namespaces

    # -- running -------------------------------------------------------------------------------

    def run(
        self, source: str, checks: tuple[Check, ...] | list[Check] = (), *, run_name: str = "__main__"
    ) -> RunResult:
        """Run ``source`` then each check in one contained process; never raises for what the
        code does (a failing, crashing or hostile candidate is a failed :class:`RunResult`).

        ``run_name`` is ``__name__`` for the source: ``"__main__"`` runs a program's main
        block; a library name (``"candidate"``) keeps it from running before the checks.
        Raises :class:`SandboxUnavailable` when the sandbox is weak and not allowed.
        """
        isolation, namespaces = self._isolation_and_mode()
        if os.name == "nt":
            raise SandboxUnavailable(
                "model-written code cannot run contained on Windows (see edgetts.sandbox)"
            )
        if isolation.weak and not self.allow_weak:
            raise SandboxUnavailable(
                "refusing to run model-written code: this machine cannot contain it\n"
                + isolation.describe()
                + "\nopt in with --allow-weak-sandbox (Python: Sandbox(allow_weak=True))"
            )
        if not namespaces:
            _hide_caller_memory()
        capped = {
            "memory": isolation.run_memory_cap,
            "pids": isolation.run_process_cap,
            "cpu": isolation.run_cpu_cap,
        }
        caps = frozenset(c for c, on in capped.items() if on)
        return self._spawn(source, tuple(checks), run_name, namespaces=namespaces, caps=caps)

    def _isolation_and_mode(self) -> tuple[Isolation, bool]:
        key = (self.python, self.namespaces, self.drop_uid)
        with _probe_lock:
            if key not in _probe_cache:
                _probe_cache[key] = self._probe()
            return _probe_cache[key]

    def _spawn(
        self,
        source: str,
        checks: tuple[Check, ...],
        run_name: str,
        namespaces: bool,
        caps: frozenset[str] | None = None,
    ) -> RunResult:
        """One contained run; ``caps``: the cgroup controllers it must have (None: any there are)."""
        lim = self.limits
        start = time.perf_counter()
        # The probe (caps None) tries every controller; a run, those the probe could join.
        controllers = CONTROLLERS if caps is None else tuple(sorted(caps))
        linux = sys.platform.startswith("linux")
        # With namespaces the bootstrap waits on the candidate in the group too: one task more.
        tasks = lim.processes + (1 if namespaces else 0)
        cgroup = (
            RunCgroup.create(lim.memory_mb, tasks, controllers, lim.cpu_cores)
            if linux and controllers
            else None
        )
        got = frozenset(cgroup.dirs if cgroup else ())
        if caps is not None and not caps <= got:
            # The probe found them: a run without them would be less contained than reported.
            if cgroup:
                cgroup.close()
            missing = ", ".join(sorted(caps - got))
            return _not_run(f"sandbox setup failed: could not make the run's {missing} cgroup", checks, start)
        try:
            return self._spawn_in(source, checks, run_name, namespaces, cgroup, caps is not None, start)
        finally:
            if cgroup:
                cgroup.close()

    def _spawn_in(
        self,
        source: str,
        checks: tuple[Check, ...],
        run_name: str,
        namespaces: bool,
        cgroup: RunCgroup | None,
        cgroups_required: bool,
        start: float,
    ) -> RunResult:
        lim = self.limits
        nonce = secrets.token_hex(16)
        workdir = tempfile.mkdtemp(prefix="edgetts-sandbox-")
        drop = self.drop_uid if os.getuid() == 0 else 0
        if drop:
            os.chown(workdir, drop, drop)  # without a tmpfs over it, nobody must write here
        cfg = {
            "nonce": nonce,
            "namespaces": namespaces,
            "drop_uid": drop,
            "limits": {
                "cpu_s": lim.cpu_s,
                "memory_mb": lim.memory_mb,
                "file_mb": lim.file_mb,
                "disk_mb": lim.disk_mb,
                "processes": lim.processes,
                "open_files": lim.open_files,
            },
            "cgroups": {c: str(d / "cgroup.procs") for c, d in cgroup.dirs.items()} if cgroup else {},
            "cgroups_required": cgroups_required,
            "caller_pid": os.getpid(),
            "check_s": lim.check_s,
            "run_name": run_name,
            "source": source,
            "checks": [{"code": c.code, "kind": c.kind} for c in checks],
        }
        cfg_r, cfg_w = os.pipe()
        rep_r, rep_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [self.python, "-I", "-S", "-c", BOOTSTRAP, str(cfg_r), str(rep_w)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={},
                cwd=workdir,
                pass_fds=(cfg_r, rep_w),
                close_fds=True,
                start_new_session=True,  # its own process group, killed as one on timeout
            )
        except BaseException:
            for fd in (cfg_r, cfg_w, rep_r, rep_w):
                os.close(fd)
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        os.close(cfg_r)
        os.close(rep_w)
        # The config is small (source + checks); a writer thread keeps a huge one from blocking.
        payload = json.dumps(cfg).encode()
        writer = threading.Thread(target=_write_all, args=(cfg_w, payload), daemon=True)
        writer.start()
        try:
            out, err, rep, timed_out, capped = self._collect(proc, rep_r, start)
        finally:
            _kill_group(proc)
            proc.wait()
            os.close(rep_r)
            writer.join(timeout=1)
            shutil.rmtree(workdir, ignore_errors=True)
        result = _interpret(
            nonce, rep, checks, out, err, proc.returncode, timed_out, capped, time.perf_counter() - start, lim
        )
        if result.error and cgroup and cgroup.out_of_memory():
            memory = f"a process of the run was killed for the run's {lim.memory_mb} MB memory cap"
            result = replace(result, error=f"{result.error} ({memory})")
        return result

    def _collect(self, proc: subprocess.Popen, rep_r: int, start: float):
        """Read stdout, stderr and reports until all close, the deadline, or the output cap."""
        cap = self.limits.output_kb * 1024
        bufs = {"out": bytearray(), "err": bytearray(), "rep": bytearray()}
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        sel.register(rep_r, selectors.EVENT_READ, "rep")
        open_streams, timed_out, capped = 3, False, False
        deadline = start + self.limits.wall_s
        try:
            while open_streams:
                left = deadline - time.perf_counter()
                if left <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(timeout=min(left, 0.5)):
                    fd = key.fd if key.data == "rep" else key.fileobj.fileno()
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        open_streams -= 1
                        continue
                    bufs[key.data] += chunk
                if len(bufs["out"]) + len(bufs["err"]) > cap or len(bufs["rep"]) > 4 * cap:
                    capped = True
                    break
            if not timed_out and not capped:
                # Streams closed: the process is ending; give it the rest of the wall time.
                try:
                    proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
                except subprocess.TimeoutExpired:
                    timed_out = True
        finally:
            sel.close()
        return bytes(bufs["out"]), bytes(bufs["err"]), bytes(bufs["rep"]), timed_out, capped


def _not_run(error: str, checks: tuple[Check, ...], start: float) -> RunResult:
    """The result of a run refused before its process started."""
    not_run = tuple(CheckResult(c.name or f"check {i}", False, None, "not run") for i, c in enumerate(checks))
    return RunResult(
        ok=False,
        loaded=False,
        error=error,
        checks=not_run,
        stdout="",
        stderr="",
        returncode=None,
        timed_out=False,
        output_capped=False,
        seconds=time.perf_counter() - start,
    )


def _write_all(fd: int, data: bytes) -> None:
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except OSError:
        pass  # the child died before reading its settings: reported as a failed run


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's whole process group (it is the group leader, see start_new_session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def _interpret(
    nonce: str,
    rep: bytes,
    checks: tuple[Check, ...],
    out: bytes,
    err: bytes,
    returncode: int | None,
    timed_out: bool,
    capped: bool,
    seconds: float,
    lim: Limits,
) -> RunResult:
    """Turn the nonce-keyed report lines into a RunResult; anything unreported failed."""
    prefix = nonce + " "
    loaded, done, setup_error, load_error = False, False, None, None
    layers: dict = {}
    got: dict[int, CheckResult] = {}
    for line in rep.decode("utf-8", "replace").splitlines():
        if not line.startswith(prefix):
            continue  # not written by the harness
        try:
            msg = json.loads(line[len(prefix) :])
        except (ValueError, RecursionError):  # "[[[[..." nests past the parser's depth
            continue
        if not isinstance(msg, dict):  # only the harness writes objects; anything else is noise
            continue
        # A candidate that found the nonce can write any JSON: only the harness's types count.
        if "setup_error" in msg:
            setup_error = _text(msg["setup_error"], 500) or "unknown"
        elif "layers" in msg:
            layers = msg["layers"] if isinstance(msg["layers"], dict) else {}
        elif "loaded" in msg:
            loaded = msg["loaded"] is True
            load_error = _text(msg.get("error"), 500)
        elif "check" in msg and type(msg["check"]) is int and 0 <= msg["check"] < len(checks):
            i = msg["check"]
            got[i] = CheckResult(
                checks[i].name or f"check {i}",
                msg.get("passed") is True,
                _text(msg.get("value"), 1000),
                _text(msg.get("error"), 500),
            )
        elif msg.get("done"):
            done = True
    results = tuple(
        got.get(i, CheckResult(c.name or f"check {i}", False, None, "not run")) for i, c in enumerate(checks)
    )
    if setup_error:
        error = f"sandbox setup failed: {setup_error}"
    elif timed_out:
        error = f"timed out after {lim.wall_s:g}s"
    elif capped:
        error = f"printed more than {lim.output_kb} KB"
    elif not loaded:
        error = load_error or _exit_reason(returncode) or "did not run"
    elif not done:
        error = f"exited before the checks finished ({_exit_reason(returncode) or 'status 0'})"
    elif returncode != 0:
        error = _exit_reason(returncode)
    else:
        error = None
    result = RunResult(
        ok=error is None,
        loaded=loaded,
        error=error,
        checks=results,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        returncode=returncode,
        timed_out=timed_out,
        output_capped=capped,
        seconds=seconds,
        layers=layers,
    )
    return result


def _text(value: object, limit: int) -> str | None:
    """A reported string as one that can be written anywhere (no lone surrogates, which a
    candidate's own text decoded from bytes can carry), at most ``limit`` characters; None
    for anything not a string."""
    if not isinstance(value, str):
        return None
    return value[:limit].encode("utf-8", "backslashreplace").decode("utf-8")


def _exit_reason(returncode: int | None) -> str | None:
    if returncode is None or returncode == 0:
        return None
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if returncode > 128:
        try:
            return f"killed by {signal.Signals(returncode - 128).name}"
        except ValueError:
            pass
    return f"exit status {returncode}"
