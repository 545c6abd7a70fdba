"""The fork driver's isolation probe (integration/fork_test.go).

?daemon=1 leaves a process behind; ?hold=MS keeps the request alive (a victim, with the secret it got in its
environment); ?pre=PID&victim=PID&cg=DIR tries to reach the preloader and a
concurrent request by their host pids, and to move itself into the route
group DIR, and answers what the kernel said to each attempt as JSON.
"""

import ctypes
import errno
import json
import os
import time
from urllib.parse import parse_qs

libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_SEND_SIGNAL = 424
PTRACE_ATTACH = 16


def attempt(f):
    try:
        f()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def check(rc):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def pidfd_signal(pid):
    fd = os.open("/proc/%d" % pid, os.O_RDONLY | os.O_DIRECTORY)
    try:
        check(libc.syscall(SYS_PIDFD_SEND_SIGNAL, fd, 9, None, 0))
    finally:
        os.close(fd)


def probes(pid):
    return {
        "environ": attempt(lambda: open("/proc/%d/environ" % pid, "rb").read()),
        "mem": attempt(lambda: open("/proc/%d/mem" % pid, "rb").close()),
        "kill": attempt(lambda: os.kill(pid, 9)),
        "pidfd_kill": attempt(lambda: pidfd_signal(pid)),
        "ptrace": attempt(lambda: check(libc.ptrace(PTRACE_ATTACH, pid, None, None))),
    }


def app(environ, start_response):
    q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if "daemon" in q:
        if os.fork() == 0:  # left behind: must be gone when the response arrives
            os.setsid()
            time.sleep(600)
            os._exit(0)
        body = {"daemon": True}
    elif "hold" in q:
        time.sleep(int(q["hold"]) / 1000)
        body = {"secret": os.environ.get("HTTP_X_SECRET", "")}
    else:
        body = {"self_pid": os.getpid(), "kill_all": attempt(lambda: os.kill(-1, 9))}
        for name in ("pre", "victim"):
            if name in q:
                body[name] = probes(int(q[name]))
        if "cg" in q:
            body["move"] = attempt(lambda: open(os.path.join(q["cg"], "cgroup.procs"), "w").write("0"))
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
