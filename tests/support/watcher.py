"""Runs ON a lab host as an unprivileged local user: keeps a copy of every file that user can read.

    python3 watcher.py STORE STOP ROOT...

Walks the ROOTs (other filesystems included, symlinks not followed) again and again until the
file STOP exists, and wakes at once when a file is written in one of them (inotify). Each regular
file it can open is copied once per version (inode, size, mtime, ctime) into STORE/c/<sha1>, and
STORE/index gets "<sha1>\\t<path>" for each version read, so that root can later grep the copies
for secrets this user never learns. STORE (0700) is never read back.
"""

import ctypes
import hashlib
import os
import select
import stat
import struct
import sys
import tempfile

store, stop, roots = sys.argv[1], sys.argv[2], sys.argv[3:]
os.umask(0o077)
os.makedirs(f"{store}/c", exist_ok=True)
index = open(f"{store}/index", "a", buffering=1)
seen: dict[str, tuple] = {}

libc = ctypes.CDLL(None, use_errno=True)
IN_CLOSE_WRITE, IN_CREATE, IN_MODIFY, IN_MOVED_TO = 0x8, 0x100, 0x2, 0x80
inotify = libc.inotify_init1(os.O_NONBLOCK)
watches = {}
for root in roots:
    wd = libc.inotify_add_watch(inotify, root.encode(), IN_CLOSE_WRITE | IN_CREATE | IN_MODIFY | IN_MOVED_TO)
    if wd >= 0:
        watches[wd] = root


def copy(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return
    digest = hashlib.sha1()
    with os.fdopen(fd, "rb") as src, tempfile.NamedTemporaryFile(dir=f"{store}/c", delete=False) as out:
        try:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        except OSError:
            pass
    name = f"{store}/c/{digest.hexdigest()}"
    if os.path.exists(name):
        os.unlink(out.name)
    else:
        os.rename(out.name, name)
    index.write(f"{digest.hexdigest()}\t{path}\n")


def visit(path: str) -> None:
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode):
        if path == store:
            return
        try:
            names = os.listdir(path)
        except OSError:
            return
        for name in names:
            visit(os.path.join(path, name))
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if seen.get(path) != key:
            seen[path] = key
            copy(path)


loops = 0
while not os.path.exists(stop):
    for root in roots:
        visit(root)
    loops += 1
    # Between walks: wake at once when a file is written directly under a root, and read it first.
    while select.select([inotify], [], [], 0.002)[0]:
        data = os.read(inotify, 65536)
        offset = 0
        while offset < len(data):
            wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16 : offset + 16 + length].rstrip(b"\0").decode(errors="surrogateescape")
            offset += 16 + length
            if name and wd in watches:
                visit(os.path.join(watches[wd], name))
with open(f"{store}/loops-{os.getpid()}", "w") as f:
    f.write(f"{loops}\n")
