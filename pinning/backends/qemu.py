"""QEMU as a peer of pinning/backends/kvm.py: how long QEMU takes to come up with all guest RAM.

``start_to_qmp`` starts ``qemu-system-x86_64`` with KVM, paused before the guest runs
(``-S``), and times it from process start to a ready QMP monitor (greeting read and
``qmp_capabilities`` answered). With ``prealloc=on`` QEMU populates all guest RAM
before its main loop runs, so that time contains the upfront populate; with
``prealloc=off`` it is the cost of starting QEMU alone. QEMU then quits via QMP.

The command line (``<size>`` in bytes, ``<MiB>`` the same in MiB)::

    qemu-system-x86_64 -enable-kvm -machine q35,memory-backend=ram0
        -object memory-backend-ram,id=ram0,size=<size>,prealloc=on|off -m <MiB>M
        -S -nodefaults -display none -qmp unix:<tmpdir>/qmp.sock,server=on,wait=off
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

from pinning.backends.hostmem import check_fits
from pinning.backends.kvm import KVM_DEVICE
from pinning.model.names import HOST_STATES, InputError
from pinning.model.units import format_size

QEMU = "qemu-system-x86_64"
INSTALL_HINT = "apt-get install qemu-system-x86"
#: guest sizes must be whole 2 MiB units (QEMU backs preallocated RAM with huge pages)
SIZE_ALIGN = 2 << 20
_QUIT_WAIT_S = 30.0  # freeing a large preallocated guest takes a while


class QemuError(RuntimeError):
    """QEMU failed to start or its QMP monitor did not answer as expected."""


class QemuTimeout(QemuError, TimeoutError):
    """QEMU's QMP monitor was not ready within the timeout."""


def qemu_binary() -> str | None:
    """Path of ``qemu-system-x86_64`` on PATH, or None."""
    return shutil.which(QEMU)


def qemu_unavailable() -> str | None:
    """None if QEMU and /dev/kvm are usable, else one line saying why."""
    if qemu_binary() is None:
        return f"{QEMU} not found: {INSTALL_HINT}"
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{KVM_DEVICE} is not usable ({exc.strerror}): QEMU here runs only with KVM"
    os.close(fd)
    return None


def qemu_version(binary: str | None = None) -> str:
    """QEMU's version as ``-version`` prints it, e.g. ``7.2.22 (Debian 1:7.2+dfsg-...)``."""
    binary = binary or qemu_binary()
    if binary is None:
        raise QemuError(f"{QEMU} not found: {INSTALL_HINT}")
    out = subprocess.run([binary, "-version"], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("QEMU emulator version").strip() or "unknown"


def check_guest_size(guest_size: int) -> None:
    """Refuse a guest size QEMU cannot back here, with one clear line (InputError)."""
    if isinstance(guest_size, bool) or not isinstance(guest_size, int):
        raise InputError(f"guest size {guest_size!r} is not a whole number of bytes")
    if guest_size <= 0:
        raise InputError("guest size must be greater than zero")
    if guest_size % SIZE_ALIGN:
        raise InputError(f"guest size {format_size(guest_size)} is not a multiple of 2MiB")
    check_fits(guest_size, f"a QEMU guest of {format_size(guest_size)}")


def qemu_command(binary: str, guest_size: int, prealloc: bool, qmp_path: str) -> list[str]:
    """The QEMU command line for a paused KVM guest of ``guest_size`` bytes."""
    return [
        binary, "-enable-kvm",
        "-machine", "q35,memory-backend=ram0",
        "-object",
        f"memory-backend-ram,id=ram0,size={guest_size},prealloc={'on' if prealloc else 'off'}",
        # -m takes MiB without a suffix; it must equal the backend's size
        "-m", f"{guest_size >> 20}M",
        "-S", "-nodefaults", "-display", "none",
        "-qmp", f"unix:{qmp_path},server=on,wait=off",
    ]


@dataclass
class QemuStart:
    """One timed start of QEMU up to a ready QMP monitor."""

    guest_size: int
    prealloc: bool
    #: process start -> QMP greeting read and qmp_capabilities answered
    ready_ns: int
    version: str
    #: "warm" or "cold", as the caller gave it
    host: str
    #: QEMU's resident memory when QMP was ready (untimed): ~guest_size with prealloc
    rss_bytes: int = 0
    #: of which anonymous transparent huge pages
    anon_huge_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready)."""
        return asdict(self)


def _proc_kib(path: str, key: str) -> int:
    """A ``Key:  N kB`` line of a /proc file in bytes (0 where it is missing)."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class _Qmp:
    """A minimal QMP client: one JSON object per line each way."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QemuTimeout("QMP monitor did not answer in time")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise QemuTimeout("QMP monitor did not answer in time") from None
            if not chunk:
                raise QemuError("QMP connection closed by QEMU")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise QemuError(f"QMP sent something that is not JSON: {line[:80]!r}") from None

    def execute(self, command: str, deadline: float) -> dict[str, Any]:
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        self.sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
        while True:
            msg = self.read(deadline)
            if "event" in msg:  # asynchronous events may come before the answer
                continue
            if "error" in msg:
                raise QemuError(f"QMP {command} failed: {msg['error'].get('desc', msg)}")
            return msg


def _connect(path: str, proc: subprocess.Popen, deadline: float) -> socket.socket:
    """Connect to QEMU's QMP socket, retrying until QEMU has created it."""
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
        if proc.poll() is not None:
            raise QemuError("QEMU exited before its QMP socket appeared")
        if time.monotonic() >= deadline:
            raise QemuTimeout("QEMU's QMP socket did not appear in time")
        # short sleeps: the socket appears within milliseconds, before guest RAM is set up
        time.sleep(0.0005)


def _kill(proc: subprocess.Popen) -> None:
    """Kill QEMU's process group and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    proc.wait()


def _last_stderr_line(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
    except OSError:
        return ""
    # QEMU prints CPUID warnings first; the error that stopped it comes last
    return lines[-1] if lines else ""


def start_to_qmp(guest_size: int, *, prealloc: bool, host: str = "warm",
                 timeout: float = 120.0) -> QemuStart:
    """Start QEMU paused with ``guest_size`` bytes of RAM; time it to a ready QMP monitor.

    ``host="warm"`` first populates and frees ``guest_size`` of anonymous memory
    (untimed), so that memory which this VM's own host took back while idle is
    backed again (HOST.md); ``"cold"`` does not, and only labels the result. QEMU quits via QMP
    afterwards; on any failure or timeout its process group is killed. Raises
    InputError for bad input, QemuTimeout (a TimeoutError) past ``timeout`` seconds,
    QemuError if QEMU fails.
    """
    if not isinstance(prealloc, bool):
        raise InputError(f"prealloc must be True or False, not {prealloc!r}")
    if host not in HOST_STATES:
        raise InputError(f"host state {host!r} is not one of {', '.join(HOST_STATES)}")
    if not timeout > 0:
        raise InputError(f"timeout {timeout!r} must be greater than zero")
    check_guest_size(guest_size)
    binary = qemu_binary()
    if binary is None:
        raise QemuError(f"{QEMU} not found: {INSTALL_HINT}")
    if host == "warm":
        from pinning.backends.hostmem import warm_host

        warm_host(guest_size)

    tmpdir = tempfile.mkdtemp(prefix="pinbench-qemu-")
    watchdog = _start_watchdog(tmpdir)
    try:
        qmp_path = os.path.join(tmpdir, "qmp.sock")
        err_path = os.path.join(tmpdir, "stderr")
        cmd = qemu_command(binary, guest_size, prealloc, qmp_path)
        with open(err_path, "wb") as err:
            deadline = time.monotonic() + timeout
            t0 = time.perf_counter_ns()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, start_new_session=True)
        try:
            _tell_watchdog(watchdog, f"{proc.pid}\n")
            try:
                greeting, ready_ns, rss, huge = _handshake(proc, qmp_path, deadline, t0)
            except QemuError as exc:
                why = "" if isinstance(exc, QemuTimeout) else _last_stderr_line(err_path)
                if why:
                    raise QemuError(f"{exc}: {why}") from exc
                raise
        finally:
            _kill(proc)  # a no-op after a clean quit
    finally:
        _tell_watchdog(watchdog, "done\n", close=True)
        watchdog.wait()
        shutil.rmtree(tmpdir, ignore_errors=True)
    version = greeting["QMP"].get("version", {})
    q = version.get("qemu", {})
    text = f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}"
    if version.get("package"):
        text += f" ({version['package'].strip()})"
    return QemuStart(guest_size=guest_size, prealloc=prealloc, ready_ns=ready_ns,
                     version=text, host=host, rss_bytes=rss, anon_huge_bytes=huge)


def _handshake(proc: subprocess.Popen, qmp_path: str, deadline: float,
               t0: int) -> tuple[dict[str, Any], int, int, int]:
    """Wait for QMP to be ready (timed from ``t0``), note QEMU's memory, then quit it."""
    try:
        sock = _connect(qmp_path, proc, deadline)
    except QemuError:
        raise
    except OSError as exc:
        raise QemuError(f"cannot connect to QEMU's QMP socket: {exc}") from exc
    with sock:
        qmp = _Qmp(sock)
        try:
            greeting = qmp.read(deadline)  # sent once QEMU's main loop runs
            if "QMP" not in greeting:
                raise QemuError(f"unexpected QMP greeting: {greeting!r}")
            qmp.execute("qmp_capabilities", deadline)
        except QemuError:
            raise
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise QemuTimeout("QMP monitor did not answer in time") from exc
            raise QemuError(f"QMP failed: {exc}") from exc
        ready_ns = time.perf_counter_ns() - t0
        rss = _proc_kib(f"/proc/{proc.pid}/status", "VmRSS")
        huge = _proc_kib(f"/proc/{proc.pid}/smaps_rollup", "AnonHugePages")
        # Quitting (and freeing guest RAM) is not measured; if QEMU does not
        # go cleanly, the caller kills it.
        with contextlib.suppress(QemuError, OSError):
            qmp.execute("quit", time.monotonic() + _QUIT_WAIT_S)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_QUIT_WAIT_S)
    return greeting, ready_ns, rss, huge


# Kills QEMU's process group (and removes the temp dir) if this process dies
# without saying "done", even by SIGKILL: its end of the pipe then reads EOF.
# A watchdog rather than PR_SET_PDEATHSIG, which needs a preexec_fn and makes
# Popen fork instead of vfork: 3-6 ms more inside the timed region here.
_WATCHDOG = """
read -r pid || exit 0
read -r state
if [ "$state" != done ]; then
    kill -s KILL -- "-$pid" 2>/dev/null
    rm -rf -- "$1"
fi
"""


def _start_watchdog(tmpdir: str) -> subprocess.Popen:
    return subprocess.Popen(["sh", "-c", _WATCHDOG, "pinbench-qemu-watchdog", tmpdir],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _tell_watchdog(watchdog: subprocess.Popen, line: str, *, close: bool = False) -> None:
    assert watchdog.stdin is not None
    try:
        with contextlib.suppress(BrokenPipeError, ValueError):
            watchdog.stdin.write(line.encode())
            watchdog.stdin.flush()
    finally:
        if close:
            with contextlib.suppress(BrokenPipeError):
                watchdog.stdin.close()
