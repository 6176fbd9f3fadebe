"""The bpf() system call from Python, for what the daemon does often: map reads and writes.

libbpf loads and attaches (loader.py); the map traffic of every sync goes straight to the
kernel here, batched, so a one-endpoint change is a few system calls and no process."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence

SYS_BPF = 321  # x86_64
MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
OBJ_GET = 7
MAP_LOOKUP_BATCH, MAP_UPDATE_BATCH, MAP_DELETE_BATCH = 24, 26, 27
LINK_DETACH = 34
BPF_ANY = 0
ATTR_SIZE = 128  # bigger than any union member we use; the kernel checks the tail is zero

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf() call failed; errno says why."""


def _u64(buf: ctypes.Array | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def bpf(cmd: int, attr: ctypes.Array) -> int:
    """One bpf() call with attr (a zeroed buffer laid out by the caller); the result, or BpfError."""
    r = _libc.syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf({cmd}): {os.strerror(err)}")
    return r


def _elem_attr(fd: int, key: ctypes.Array, value: ctypes.Array | None, flags: int = 0) -> ctypes.Array:
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    ctypes.c_uint32.from_buffer(attr, 0).value = fd
    ctypes.c_uint64.from_buffer(attr, 8).value = _u64(key)
    ctypes.c_uint64.from_buffer(attr, 16).value = _u64(value)
    ctypes.c_uint64.from_buffer(attr, 24).value = flags
    return attr


def lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    try:
        bpf(MAP_LOOKUP_ELEM, _elem_attr(fd, k, v))
    except BpfError as e:
        if e.errno == 2:  # ENOENT
            return None
        raise
    return v.raw


def update(fd: int, key: bytes, value: bytes) -> None:
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    bpf(MAP_UPDATE_ELEM, _elem_attr(fd, k, v, BPF_ANY))


def delete(fd: int, key: bytes) -> bool:
    """Delete key; False if it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        bpf(MAP_DELETE_ELEM, _elem_attr(fd, k, None))
    except BpfError as e:
        if e.errno == 2:
            return False
        raise
    return True


def keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a hash map (GET_NEXT_KEY; a key deleted meanwhile may restart the walk)."""
    cur: ctypes.Array | None = None
    nxt = ctypes.create_string_buffer(key_size)
    while True:
        try:
            bpf(MAP_GET_NEXT_KEY, _elem_attr(fd, cur, nxt) if cur is not None else _elem_attr(fd, None, nxt))
        except BpfError as e:
            if e.errno == 2:
                return
            raise
        yield nxt.raw
        cur = ctypes.create_string_buffer(nxt.raw, key_size)


def items(fd: int, key_size: int, value_size: int) -> dict[bytes, bytes]:
    """The whole map, key by key (reads are rare: adoption, trace, status page)."""
    out = {}
    for k in list(keys(fd, key_size)):
        v = lookup(fd, k, value_size)
        if v is not None:
            out[k] = v
    return out


def _batch_attr(fd: int, keys_buf: ctypes.Array, values_buf: ctypes.Array | None, count: int) -> ctypes.Array:
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    ctypes.c_uint64.from_buffer(attr, 16).value = _u64(keys_buf)
    ctypes.c_uint64.from_buffer(attr, 24).value = _u64(values_buf)
    ctypes.c_uint32.from_buffer(attr, 32).value = count
    ctypes.c_uint32.from_buffer(attr, 36).value = fd
    return attr


BATCH = 8192  # elements per call: big enough to amortise the call, small enough to stay in cache


def update_batch(fd: int, pairs: Sequence[tuple[bytes, bytes]]) -> int:
    """Write many elements in BPF_MAP_UPDATE_BATCH calls; the number of calls made."""
    calls = 0
    for i in range(0, len(pairs), BATCH):
        chunk = pairs[i:i + BATCH]
        kb = ctypes.create_string_buffer(b"".join(k for k, _ in chunk))
        vb = ctypes.create_string_buffer(b"".join(v for _, v in chunk))
        bpf(MAP_UPDATE_BATCH, _batch_attr(fd, kb, vb, len(chunk)))
        calls += 1
    return calls


def delete_batch(fd: int, keys_: Sequence[bytes]) -> None:
    """Delete many keys; keys already absent are skipped one by one (the batch call stops at
    the first missing key, having deleted those before it)."""
    i = 0
    while i < len(keys_):
        chunk = keys_[i:i + BATCH]
        kb = ctypes.create_string_buffer(b"".join(chunk))
        attr = _batch_attr(fd, kb, None, len(chunk))
        try:
            bpf(MAP_DELETE_BATCH, attr)
            i += len(chunk)
        except BpfError as e:
            if e.errno != 2:
                raise
            done = ctypes.c_uint32.from_buffer(attr, 32).value
            i += done + 1  # the missing key itself is skipped


def obj_get(path: str) -> int:
    """An fd for a pinned map, program or link."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    ctypes.c_uint64.from_buffer(attr, 0).value = _u64(p)
    return bpf(OBJ_GET, attr)


def link_detach(link_fd: int) -> None:
    """Detach a link's program from its hook now, whoever else still holds the link."""
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    ctypes.c_uint32.from_buffer(attr, 0).value = link_fd
    bpf(LINK_DETACH, attr)
