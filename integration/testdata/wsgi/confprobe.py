"""The confined fork route's probe (integration/fork_test.go): the WSGI
twin of the test binary's CGI probe role, answering the same JSON.

?read=PATH tries to read a file; ?connect=HOST:PORT a TCP connection;
?fill=PATH:MiB writes a file; ?procs=1 lists /proc; ?sysvshm=1 reads
/proc/sysvipc/shm; ?sys=NAME:NR:A:B:C makes a raw system call (numbers from
the test, so that the probe needs no table of its own); ?preload=1 answers
what the preloader could do while it imported this module.
"""

import ctypes
import errno
import json
import os
import socket
from urllib.parse import parse_qs

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
CLONE_NEWUSER = 0x10000000


def err_name(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def raw(nr, *args):
    if libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & (1 << 64) - 1) for a in args)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def read(path):
    with open(path, "rb") as f:
        f.read()


def fill(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(b"\0" * (1 << 20))


def connect(addr):
    host, port = addr.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=5).close()


def preloader_facts():
    facts = {"unshare(CLONE_NEWUSER)": err_name(lambda: raw_unshare())}
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            facts["max_user_namespaces"] = f.read().strip()
    except OSError as e:
        facts["max_user_namespaces"] = errno.errorcode.get(e.errno, str(e.errno))
    return facts


def raw_unshare():
    if libc.unshare(CLONE_NEWUSER) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


PRELOAD = preloader_facts()  # at import: in the preloader itself


def app(environ, start_response):
    q = parse_qs(environ.get("QUERY_STRING", ""))
    r = {"read": {}, "connect": {}, "fill": {}, "syscalls": {}, "uid": os.getuid(), "gid": os.getgid(),
         "hostname": socket.gethostname()}
    for p in q.get("read", []):
        r["read"][p] = err_name(lambda: read(p))
    for a in q.get("connect", []):
        r["connect"][a] = err_name(lambda: connect(a))
    for f in q.get("fill", []):
        p, mib = f.rsplit(":", 1)
        r["fill"][p] = err_name(lambda: fill(p, int(mib)))
    if "procs" in q:
        procs = []
        for e in sorted(os.listdir("/proc"), key=lambda n: (len(n), n)):
            if e.isdigit():
                try:
                    with open("/proc/%s/cmdline" % e, "rb") as f:
                        procs.append(e + " " + f.read().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    procs.append(e + " ?")
        r["procs"] = procs
    for s in q.get("sys", []):
        name, nr, a, b, c = s.split(":")
        r["syscalls"][name] = err_name(lambda: raw(int(nr), int(a), int(b), int(c)))
    if "sysvshm" in q:
        try:
            with open("/proc/sysvipc/shm") as f:
                r["sysvshm"] = f.read()
        except OSError as e:
            r["sysvshm"] = errno.errorcode.get(e.errno, str(e.errno))
    if "preload" in q:
        r["syscalls"] = PRELOAD
    data = json.dumps(r).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
