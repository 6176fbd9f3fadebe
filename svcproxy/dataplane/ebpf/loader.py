"""Load, attach, pin, adopt and remove the BPF programs, through libbpf (ctypes).

Layout under the pin directory (default /sys/fs/bpf/svcproxy), one subdirectory per IP family
(the daemon runs one dataplane per family, each syncs on its own):
    ipv4/maps/{services,slots,endpoints,affinity,revnat}
    ipv4/links/{connect4,sendmsg4,recvmsg4,getpeername4}
Maps are pinned through libbpf's pin_path: a later load finds the pinned map and reuses it, so a
restarted daemon keeps every entry. Links are pinned too: a restart swaps the new program into
the existing link (BPF_LINK_UPDATE), so the hook is never empty. Cgroup links are multi-attach
by nature: other tools' programs on the same cgroup keep running beside ours."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import bpfsys

DEFAULT_PIN_ROOT = Path("/sys/fs/bpf/svcproxy")
BPFFS_MAGIC = 0xCAFE4A11
CGROUP2_MAGIC = 0x63677270
MAP_NAMES = ("services", "slots", "endpoints", "affinity", "revnat")
HOOKS = ("connect", "sendmsg", "recvmsg", "getpeername")


class LoadError(RuntimeError):
    """The programs could not be loaded or attached; the message names what is missing."""


def hooks(family: int) -> tuple[str, ...]:
    """The hook names of one family: connect4, sendmsg4, ..."""
    return tuple(f"{h}{family}" for h in HOOKS)


def family_dir(pin_root: Path, family: int) -> Path:
    return pin_root / f"ipv{family}"


# --- libbpf through ctypes ---------------------------------------------------------------------

_lib: ctypes.CDLL | None = None


def libbpf() -> ctypes.CDLL:
    """libbpf.so.1 with the signatures we call; LoadError when it is not installed."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError as e:
        raise LoadError(f"libbpf is missing ({e}): `apt-get install libbpf1`; or use --proxy-mode nftables") from e
    vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    for name, res, args in (
        ("bpf_object__open_file", vp, [cp, vp]),
        ("bpf_object__load", ci, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_program_by_name", vp, [vp, cp]),
        ("bpf_object__find_map_by_name", vp, [vp, cp]),
        ("bpf_object__next_program", vp, [vp, vp]),
        ("bpf_program__name", cp, [vp]),
        ("bpf_program__set_autoload", ci, [vp, ctypes.c_bool]),
        ("bpf_program__attach_cgroup", vp, [vp, ci]),
        ("bpf_map__set_pin_path", ci, [vp, cp]),
        ("bpf_map__fd", ci, [vp]),
        ("bpf_link__pin", ci, [vp, cp]),
        ("bpf_link__open", vp, [cp]),
        ("bpf_link__update_program", ci, [vp, vp]),
        ("bpf_link__disconnect", None, [vp]),
        ("bpf_link__destroy", ci, [vp]),
        ("libbpf_set_print", vp, [vp]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    _lib = lib
    _capture_libbpf_log(lib)
    return lib


_PRINT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log_lines: list[str] = []


def _capture_libbpf_log(lib: ctypes.CDLL) -> None:
    """Keep libbpf's messages (the verifier's log among them) for the error we raise."""
    libc = ctypes.CDLL(None)
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]

    def printer(level: int, fmt: bytes, args: int) -> int:
        buf = ctypes.create_string_buffer(4096)
        libc.vsnprintf(buf, len(buf), fmt, args)
        _log_lines.append(buf.value.decode(errors="replace"))
        del _log_lines[:-200]
        return 0

    cb = _PRINT(printer)
    lib._svcproxy_print = cb  # keep the callback alive as long as the library
    lib.libbpf_set_print(ctypes.cast(cb, ctypes.c_void_p))


def _fail(what: str, err: int) -> LoadError:
    tail = "".join(_log_lines[-20:]).strip()
    _log_lines.clear()
    return LoadError(f"{what}: {os.strerror(abs(err)) if err else 'failed'}" + (f"\nlibbpf: {tail}" if tail else ""))


# --- host checks ---------------------------------------------------------------------------

def _fs_magic(path: Path) -> int:
    """statfs(2)'s f_type of path; 0 when it does not exist."""
    buf = ctypes.create_string_buffer(128)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.statfs(os.fsencode(str(path)), buf) != 0:
        return 0
    return ctypes.c_long.from_buffer(buf, 0).value & 0xFFFFFFFF


def cgroup2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (unified, or hybrid's /sys/fs/cgroup/unified)."""
    for p in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if _fs_magic(p) == CGROUP2_MAGIC:
            return p
    return None


def missing_requirements(cgroup: Path) -> list[str]:
    """What this host lacks to run ebpf mode, each as a phrase naming it; empty: all there."""
    missing = []
    if os.geteuid() != 0:
        missing.append("privilege (run as root, or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        missing.append("kernel BTF (/sys/kernel/btf/vmlinux; CONFIG_DEBUG_INFO_BTF)")
    if _fs_magic(cgroup) != CGROUP2_MAGIC:
        missing.append(f"a cgroup v2 hierarchy at {cgroup}")
    if ctypes.util.find_library("bpf") is None and not Path("/usr/lib/x86_64-linux-gnu/libbpf.so.1").exists():
        missing.append("libbpf (apt-get install libbpf1)")
    return missing


def ensure_bpffs(pin_root: Path) -> None:
    """Mount bpffs on /sys/fs/bpf when the pin root is not on one (pins need it)."""
    base = Path("/sys/fs/bpf")
    if pin_root.is_relative_to(base) and _fs_magic(base) != BPFFS_MAGIC:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", str(base).encode(), b"bpf", 0, None) != 0:
            raise LoadError(f"mounting bpffs on {base}: {os.strerror(ctypes.get_errno())}")


# --- the loaded programs -------------------------------------------------------------------

@dataclass
class Loaded:
    """One family's programs attached to one cgroup, with the fds of their maps."""

    family: int
    pin_dir: Path
    obj: int  # struct bpf_object *
    maps: dict[str, int] = field(default_factory=dict)  # name -> fd
    links: dict[str, int] = field(default_factory=dict)  # hook -> struct bpf_link *
    adopted: bool = False  # the maps were already pinned: their entries come from a previous run

    def close(self) -> None:
        """Let go of this process's references; the pins keep everything attached."""
        lib = libbpf()
        for link in self.links.values():
            lib.bpf_link__disconnect(link)  # destroy must not detach: the pin keeps it
            lib.bpf_link__destroy(link)
        self.links.clear()
        if self.obj:
            lib.bpf_object__close(self.obj)
            self.obj = 0
        self.maps.clear()


def load(obj_path: Path, cgroup: Path, family: int, pin_root: Path = DEFAULT_PIN_ROOT) -> Loaded:
    """Open, load and attach one family's programs, reusing pinned maps and links.

    A pinned link gets the new program swapped in (no moment without a program); a missing one
    is created on the cgroup and pinned. Pinned maps of another layout (an upgrade changed
    bpf/sock.c's structs) cannot be reused: they are replaced by new, empty ones, which the
    first full sync fills."""
    try:
        return _load(obj_path, cgroup, family, pin_root)
    except LoadError:
        maps_dir = family_dir(pin_root, family) / "maps"
        if not (maps_dir / "services").exists():
            raise
        for pin in maps_dir.iterdir():
            pin.unlink()
        return _load(obj_path, cgroup, family, pin_root)


def _load(obj_path: Path, cgroup: Path, family: int, pin_root: Path) -> Loaded:
    lib = libbpf()
    ensure_bpffs(pin_root)
    fdir = family_dir(pin_root, family)
    (fdir / "maps").mkdir(parents=True, exist_ok=True)
    (fdir / "links").mkdir(parents=True, exist_ok=True)
    adopted = (fdir / "maps" / "services").exists()
    obj = lib.bpf_object__open_file(str(obj_path).encode(), None)
    if not obj:
        raise _fail(f"opening {obj_path}", ctypes.get_errno())
    loaded = Loaded(family, fdir, obj, adopted=adopted)
    try:
        wanted = {f"svcproxy_{h}" for h in hooks(family)}
        prog = lib.bpf_object__next_program(obj, None)
        while prog:
            lib.bpf_program__set_autoload(prog, lib.bpf_program__name(prog).decode() in wanted)
            prog = lib.bpf_object__next_program(obj, prog)
        for name in MAP_NAMES:
            m = lib.bpf_object__find_map_by_name(obj, name.encode())
            if not m or lib.bpf_map__set_pin_path(m, str(fdir / "maps" / name).encode()) != 0:
                raise _fail(f"map {name} in {obj_path}", ctypes.get_errno())
        err = lib.bpf_object__load(obj)
        if err:
            raise _fail(f"loading {obj_path} into the kernel", err)
        for name in MAP_NAMES:
            loaded.maps[name] = lib.bpf_map__fd(lib.bpf_object__find_map_by_name(obj, name.encode()))
        cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for hook in hooks(family):
                loaded.links[hook] = _attach(lib, obj, hook, cg_fd, fdir / "links" / hook)
        finally:
            os.close(cg_fd)
    except BaseException:
        loaded.close()
        raise
    return loaded


def _attach(lib: ctypes.CDLL, obj: int, hook: str, cg_fd: int, pin: Path) -> int:
    """The link of one hook: the pinned one with our program swapped in, or a new pinned one."""
    prog = lib.bpf_object__find_program_by_name(obj, f"svcproxy_{hook}".encode())
    if pin.exists():
        link = lib.bpf_link__open(str(pin).encode())
        if link:
            err = lib.bpf_link__update_program(link, prog)
            if err == 0:
                return link
            lib.bpf_link__disconnect(link)
            lib.bpf_link__destroy(link)
        pin.unlink(missing_ok=True)  # unusable (a program of another kind?): attach anew
    link = lib.bpf_program__attach_cgroup(prog, cg_fd)
    if not link:
        raise _fail(f"attaching {hook} to the cgroup", ctypes.get_errno())
    err = lib.bpf_link__pin(link, str(pin).encode())
    if err:
        lib.bpf_link__destroy(link)
        raise _fail(f"pinning the {hook} link at {pin}", err)
    return link


def remove(pin_root: Path = DEFAULT_PIN_ROOT) -> list[str]:
    """Detach every pinned link and remove every pin under pin_root; what was removed. Uses
    no libbpf (cleanup must work where the mode cannot run) and touches nothing not pinned there."""
    removed: list[str] = []
    if not pin_root.is_dir():
        return removed
    for pin in sorted(pin_root.glob("*/links/*")):
        try:
            fd = bpfsys.obj_get(str(pin))
            try:
                bpfsys.link_detach(fd)
            finally:
                os.close(fd)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EINVAL):
                raise
        pin.unlink(missing_ok=True)
        removed.append(str(pin))
    for pin in sorted(pin_root.glob("*/maps/*")):
        pin.unlink(missing_ok=True)
        removed.append(str(pin))
    shutil.rmtree(pin_root, ignore_errors=True)  # only empty directories are left (bpffs)
    return removed
