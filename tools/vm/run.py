"""Boot a throwaway qemu VM with a real Debian kernel (SocketCAN, vcan) and run one command in it.

The VM sees the host's root file system read-only and the repository read-write, both over 9p,
so the project's .venv and the host's can-utils work unchanged inside. Usage:

    python tools/vm/run.py [--timeout S] [--mem MB] [--smp N] -- COMMAND [ARG ...]
    python tools/vm/run.py --check        # say why the harness cannot start, exit 1; or exit 0

COMMAND runs as root in the repository root, through /bin/sh; its output is streamed to stdout and
its exit code becomes ours (124 on timeout, 125 when the VM did not start). Prepare the machine
once with `bash tools/vm/prepare.sh`.
"""

from __future__ import annotations

import argparse
import lzma
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"
# What the VM loads, by module name; their dependencies come from modules.dep (depmod -b).
MODULES = ("virtio_pci", "9pnet_virtio", "9p", "can", "can_raw", "can_bcm", "can_gw", "can_j1939", "can_dev", "vcan")
HOST_TOOLS = ("cansend", "candump", "ip")
READY = "@@emsbms-vm-ready"
DONE = "@@emsbms-vm-done"
GUEST_IO = "/run/vmio"  # where the command sees run()'s io_dir
EXIT_TIMEOUT = 124
EXIT_NO_VM = 125

INIT = r"""#!/bin/busybox sh
REPO=$REPO_QUOTED
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "@@emsbms-vm-failed: $*"; echo 125 > /vmio/rc 2>/dev/null; sync; reboot -f; }
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod "/modules/$m" || fail "insmod $m"; done
p9="trans=virtio,version=9p2000.L,msize=262144"
mount -t 9p -o "$p9,rw" vmio /vmio || fail "mount vmio"
mount -t 9p -o "$p9,ro,cache=loose" hostroot /newroot || fail "mount host root"
for d in tmp run; do mount -t tmpfs -o mode=1777 tmpfs "/newroot/$d" || fail "tmpfs /$d"; done
mkdir -m 700 /newroot/tmp/home
[ -d "/newroot$REPO" ] || mkdir -p "/newroot$REPO"
mount -t 9p -o "$p9,rw,cache=loose" project "/newroot$REPO" || fail "mount project at $REPO"
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm /newroot/run/vmio
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount --bind /vmio /newroot/run/vmio
ip link set lo up
echo "$READY $(cut -d' ' -f1 /proc/uptime) s guest uptime"
chroot /newroot /bin/sh /run/vmio/command.sh
rc=$?
echo "$DONE $rc"
echo $rc > /vmio/rc
sync
reboot -f
"""


class HarnessUnavailable(Exception):
    """The VM cannot start here; the message says what is missing."""


@dataclass
class Kernel:
    """A kernel from the cache: its image, version and module tree."""

    version: str
    image: Path
    modules: Path


@dataclass
class VmResult:
    """What a VM run gave: the command's exit code and output, and the times measured."""

    returncode: int
    output: str
    boot_log: str
    boot_seconds: float | None  # host time from qemu start to the command start
    seconds: float  # host time of the whole run
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)


def cache_dir() -> Path:
    """The cache of tools/vm/prepare.sh: $EMSBMS_VM_CACHE or <repo>/.vm-cache."""
    return Path(os.environ.get("EMSBMS_VM_CACHE") or REPO / ".vm-cache")


def find_kernel(cache: Path | None = None) -> Kernel:
    """The kernel prepare.sh extracted; raises HarnessUnavailable if there is none."""
    base = (cache or cache_dir()) / "kernel"
    version_file = base / "VERSION"
    if not version_file.is_file():
        raise HarnessUnavailable(f"no kernel in {base} (run: bash tools/vm/prepare.sh)")
    version = version_file.read_text().strip()
    kernel = Kernel(version, base / "vmlinuz", base / "lib" / "modules" / version)
    if not kernel.image.is_file() or not (kernel.modules / "modules.dep").is_file():
        raise HarnessUnavailable(f"kernel {version} in {base} is incomplete (run: bash tools/vm/prepare.sh)")
    return kernel


def boot_image(kernel: Kernel) -> Path:
    """The uncompressed vmlinux, extracted once next to vmlinuz, or vmlinuz if that fails.

    qemu boots an ELF vmlinux directly (PVH): under TCG this saves the ~3.5 s the kernel spends
    decompressing its own xz image.
    """
    vmlinux = kernel.image.with_name("vmlinux")
    if vmlinux.is_file():
        return vmlinux
    data = kernel.image.read_bytes()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        return kernel.image
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    except lzma.LZMAError:
        return kernel.image
    if not elf.startswith(b"\x7fELF"):
        return kernel.image
    tmp = vmlinux.with_name(f"vmlinux.{os.getpid()}.tmp")
    tmp.write_bytes(elf)
    tmp.replace(vmlinux)
    return vmlinux


def unavailable_reason(cache: Path | None = None) -> str | None:
    """Why the VM cannot start on this machine, or None if it can."""
    if not sys.platform.startswith("linux"):
        return f"the VM harness needs Linux, found {sys.platform}"
    if os.geteuid() != 0:
        return "the VM harness must run as root (its 9p shares export the host's files to the guest's root)"
    if shutil.which(QEMU) is None:
        return f"{QEMU} not found (run: bash tools/vm/prepare.sh)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} not found (busybox-static; run: bash tools/vm/prepare.sh)"
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    if missing:
        return f"host tools not found: {', '.join(missing)} (can-utils, iproute2; run: bash tools/vm/prepare.sh)"
    try:
        find_kernel(cache)
    except HarnessUnavailable as e:
        return str(e)
    return None


def _module_name(path: str) -> str:
    name = Path(path).name
    for suffix in (".xz", ".zst", ".gz", ".ko"):
        name = name.removesuffix(suffix)
    return name.replace("-", "_")


def module_order(modules: Path, wanted: Iterable[str] = MODULES) -> list[Path]:
    """The module files to insmod, dependencies first, from modules.dep (built-in ones are skipped)."""
    deps: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    builtin_file = modules / "modules.builtin"
    builtin = {_module_name(x) for x in builtin_file.read_text().split()} if builtin_file.is_file() else set()
    for line in (modules / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        paths[_module_name(target)] = target
        deps[_module_name(target)] = [_module_name(d) for d in rest.split()]
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order or (name in builtin and name not in paths):
            return
        if name not in paths:
            raise HarnessUnavailable(f"module {name} (needed by {' <- '.join(chain) or 'the VM'}) "
                                     f"not in {modules}/modules.dep")
        for dep in deps[name]:
            visit(dep, (name, *chain))
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return [modules / paths[n] for n in order]


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0), ino: int = 0) -> bytes:
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields) + name.encode() + b"\0"
    header += b"\0" * (-len(header) % 4)
    return header + data + b"\0" * (-len(data) % 4)


def _module_bytes(path: Path) -> bytes:
    if path.suffix == ".ko":
        return path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(path.read_bytes())
    raise HarnessUnavailable(f"cannot unpack module {path}: only .ko and .ko.xz are supported")


def build_initramfs(kernel: Kernel, out: Path) -> None:
    """Write a newc cpio: static busybox, /init, the modules in load order and /dev/console."""
    files = module_order(kernel.modules)
    entries = [_cpio_entry(d, 0o40755) for d in ("bin", "dev", "proc", "sys", "newroot", "vmio", "modules")]
    entries.append(_cpio_entry("dev/console", 0o20600, rdev=(5, 1)))
    entries.append(_cpio_entry("bin/busybox", 0o100755, BUSYBOX.read_bytes()))
    init = INIT.replace("$READY", READY).replace("$DONE", DONE).replace("$REPO_QUOTED", shlex.quote(str(REPO)))
    entries.append(_cpio_entry("init", 0o100755, init.encode()))
    names = [f"{_module_name(str(f))}.ko" for f in files]
    entries.append(_cpio_entry("modules/order", 0o100644, "\n".join(names).encode() + b"\n"))
    entries += [_cpio_entry(f"modules/{n}", 0o100644, _module_bytes(f)) for n, f in zip(names, files, strict=True)]
    entries.append(_cpio_entry("TRAILER!!!", 0))
    out.write_bytes(b"".join(entries))


def _command_script(command: str, env: Mapping[str, str]) -> str:
    base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/tmp/home",
            "LANG": "C.UTF-8", "TERM": "dumb", "EMSBMS_IN_VM": "1", "EMSBMS_VM_IO": GUEST_IO, **env}
    exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in base.items())
    return f"{exports}cd {shlex.quote(str(REPO))} || exit 125\nexec 2>&1\n{command}\n"


def qemu_argv(kernel: Kernel, initramfs: Path, vmio: Path, mem_mb: int, smp: int) -> list[str]:
    """The qemu command line: TCG (KVM guests hang on these machines), serial console on stdio."""
    share = "security_model=none,multidevs=remap"
    return [
        QEMU, "-accel", "tcg", "-cpu", "max", "-m", str(mem_mb), "-smp", str(smp),
        "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-monitor", "none",
        "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
        "-kernel", str(boot_image(kernel)), "-initrd", str(initramfs),
        "-append", "console=ttyS0 quiet loglevel=1 panic=-1 random.trust_cpu=on mitigations=off",
        "-virtfs", f"local,path=/,mount_tag=hostroot,readonly=on,{share}",
        "-virtfs", f"local,path={REPO},mount_tag=project,{share}",
        "-virtfs", f"local,path={vmio},mount_tag=vmio,{share}",
    ]


def run(
    command: str,
    timeout: float = 300.0,
    mem_mb: int = 1536,
    smp: int = 2,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    io_dir: Path | None = None,
) -> VmResult:
    """Boot the VM, run COMMAND (a /bin/sh command line) in the repo root, and return its result.

    The command sees `io_dir` (default: a temporary directory) read-write at /run/vmio: files it
    writes there (e.g. a JUnit XML report) are on the host afterwards.
    """
    reason = unavailable_reason()
    if reason:
        raise HarnessUnavailable(reason)
    kernel = find_kernel()
    with tempfile.TemporaryDirectory(prefix="emsbms-vm-") as tmp:
        vmio = io_dir or Path(tmp) / "io"
        vmio.mkdir(parents=True, exist_ok=True)
        (vmio / "rc").unlink(missing_ok=True)
        (vmio / "command.sh").write_text(_command_script(command, env or {}))
        initramfs = Path(tmp) / "initramfs.cpio"
        build_initramfs(kernel, initramfs)
        return _boot(qemu_argv(kernel, initramfs, vmio, mem_mb, smp), vmio, timeout, on_line)


def _boot(argv: list[str], vmio: Path, timeout: float, on_line: Callable[[str], None] | None) -> VmResult:
    start = time.monotonic()
    boot: list[str] = []
    out: list[str] = []
    ready_at: list[float] = []
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            if not ready_at:
                if line.startswith(READY):
                    ready_at.append(time.monotonic())
                else:
                    boot.append(line)
                continue
            if line.startswith(DONE):
                ready_at.append(time.monotonic())
            if len(ready_at) > 1:
                continue
            out.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        proc.wait()
    reader.join(5)
    seconds = time.monotonic() - start
    rc_file = vmio / "rc"
    errors = [line for line in boot if line.startswith("@@emsbms-vm-failed")]
    if timed_out:
        rc = EXIT_TIMEOUT
    elif rc_file.is_file() and rc_file.read_text().strip().isdigit():
        rc = int(rc_file.read_text().strip())
    else:
        rc = EXIT_NO_VM
        errors.append(f"the VM gave no exit code (qemu exited {proc.returncode})")
    return VmResult(rc, "\n".join(out), "\n".join(boot), ready_at[0] - start if ready_at else None,
                    seconds, timed_out, errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before the VM is killed")
    parser.add_argument("--mem", type=int, default=1536, help="guest memory, MB")
    parser.add_argument("--smp", type=int, default=2, help="guest CPUs")
    parser.add_argument("--check", action="store_true", help="only say whether the VM can start")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if args.check:
        print(reason or "ok: the VM harness can start")
        return 1 if reason else 0
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        parser.error("no command given")
    if reason:
        print(f"run.py: {reason}", file=sys.stderr)
        return EXIT_NO_VM
    command = words[0] if len(words) == 1 else shlex.join(words)
    result = run(command, args.timeout, args.mem, args.smp, on_line=print)
    for error in result.errors:
        print(f"run.py: {error}", file=sys.stderr)
    if result.returncode == EXIT_NO_VM:
        print(result.boot_log, file=sys.stderr)
    boot = f"{result.boot_seconds:.1f} s" if result.boot_seconds is not None else "no boot"
    print(f"run.py: exit {result.returncode}, boot {boot}, total {result.seconds:.1f} s", file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
