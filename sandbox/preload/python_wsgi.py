# cellgate's preloader for the python-wsgi runtime (the fork driver).
#
# Started by cellgate as `python3 -I -c <this file> APP APP_DIR SETUP`,
# with fd 3 a SOCK_SEQPACKET socket to cellgate. It speaks
# the preloader protocol, version 3 (DESIGN.md "Preloader protocol"): it
# imports APP ("module:callable") once from APP_DIR, freezes the collector,
# says ready, and then, single-threaded, answers each spawn by cloning a
# child straight into the request's cell (clone3 CLONE_INTO_CGROUP, with
# CLONE_PARENT so that cellgate is the child's parent and reaps it). SETUP
# (JSON) says what each child sets up in itself first: PID, mount and IPC
# namespaces of its own, fresh tmpfs mounts and a /proc, a seccomp filter.
# The child takes the request's uid, stdio and environment and serves
# exactly one request with wsgiref's CGIHandler, then exits (by SIGSEGV
# when the app failed after its response had started: a cut response is
# then not passed on as whole); the response goes out on a private fd,
# and the app's own stdout (print, logging set up on sys.stdout) is the
# request's stderr. The preloader's own fds 1 and 2 are a pipe that
# cellgate reads and logs, bounded. Standard library only.

import array
import ctypes
import gc
import importlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from wsgiref.handlers import BaseCGIHandler, CGIHandler, read_environ

# What the app's import set in (and removed from) the preloader's
# environment, and that environment before it: every child's gets the
# same on top of its request's (serve_one).
app_environ = ({}, [], {})

VERSION = 3
MAX_MESSAGE = 1 << 20
SOCK_FD = 3

CLONE_PIDFD = 0x1000
CLONE_PARENT = 0x8000
CLONE_NEWNS = 0x20000
CLONE_NEWIPC = 0x8000000
CLONE_NEWPID = 0x20000000
CLONE_INTO_CGROUP = 0x200000000
SYS_CLONE3 = {"x86_64": 435, "aarch64": 435}.get(os.uname().machine, 435)  # asm-generic number
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


class CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
        "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# PyDLL keeps the GIL held across the call: nothing else may run while the
# process is being cloned.
libc = ctypes.PyDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
api = ctypes.pythonapi


def send(sock, msg, fds=()):
    data = json.dumps(dict(msg, v=VERSION)).encode()
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sock.sendmsg([data], anc)


def receive(sock):
    """One message and its fds; (None, []) at the end of the stream."""
    fds = array.array("i")
    data, anc, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError("a message or its fds were truncated")
    if not data and not fds:
        return None, []
    return json.loads(data), list(fds)


class Setup:
    """What each child sets up in itself (SETUP), prepared once so that a
    child only makes system calls."""

    def __init__(self, text):
        c = json.loads(text)
        self.flags = CLONE_PIDFD | CLONE_PARENT
        for key, flag in (("newpid", CLONE_NEWPID), ("newns", CLONE_NEWNS), ("newipc", CLONE_NEWIPC)):
            if c.get(key):
                self.flags |= flag
        self.mounts = [(b"tmpfs", t["target"].encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                        ("mode=%o,size=%d" % (t["mode"], t["size"])).encode()) for t in c.get("tmpfs") or ()]
        if c.get("proc"):
            self.mounts.append((b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None))
        self.filter = None
        if c.get("seccomp"):
            prog = bytes.fromhex(c["seccomp"])
            self._buf = ctypes.create_string_buffer(prog, len(prog))
            self.filter = SockFprog(len(prog) // 8, ctypes.addressof(self._buf))

    def mount(self):
        """In the child, still root of the preloader's user namespace."""
        for source, target, fstype, flags, data in self.mounts:
            if libc.mount(source, target, fstype, flags, data) != 0:
                err = ctypes.get_errno()
                raise OSError(err, "mount %s on %s: %s" % (fstype.decode(), target.decode(), os.strerror(err)))

    def seccomp(self):
        """In the child, last: the request's code runs under the filter."""
        if self.filter is not None and libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(self.filter), 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "seccomp: " + os.strerror(err))


def clone_into(cgroup_fd, flags):
    """clone3 into the cgroup of cgroup_fd (-1: stay); (pid, pidfd) in the
    parent, (0, -1) in the child."""
    pidfd = ctypes.c_int(-1)
    if cgroup_fd >= 0:
        flags |= CLONE_INTO_CGROUP
    args = CloneArgs(flags=flags, pidfd=ctypes.addressof(pidfd), cgroup=max(cgroup_fd, 0))
    api.PyOS_BeforeFork()
    pid = libc.syscall(SYS_CLONE3, ctypes.byref(args), ctypes.sizeof(args))
    if pid == 0:
        api.PyOS_AfterFork_Child()
        return 0, -1
    err = ctypes.get_errno()
    api.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, "clone3: " + os.strerror(err))
    return pid, pidfd.value


# What the header block, written as is, cannot hold: a name that is not
# an HTTP token (a colon or a space in it would make a name of part of
# it), and in a value or the status a control character but HTAB (a CR or
# LF would end its line and start one of whoever wrote the rest: response
# splitting, a Set-Cookie from a redirect's user-given next).
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_field(what, text):
    """Refuse text (a header value or the status) that cannot be written
    as one line of the header block, naming it as what."""
    if type(text) is not str:
        raise TypeError("%s is a %s, not a str" % (what, type(text).__name__))
    bad = CONTROL.search(text)
    if bad:
        raise ValueError("%s holds a control character (%r at %d), which would end its line of the header block"
                         % (what, bad.group(), bad.start()))
    try:
        text.encode("latin-1")
    except UnicodeEncodeError as e:
        raise ValueError("%s holds %r, outside latin-1 (PEP 3333)" % (what, text[e.start])) from None


class Handler(CGIHandler):
    """CGIHandler on the given streams and environ instead of sys's and
    os.environ."""

    # cut: the app failed once the response had started (serve_one then
    # ends the child by a fault). started: the head was written (wsgiref's
    # close() resets headers_sent, this stays). whole: the response was
    # written whole (finish_content). gone: writing the response failed
    # for its reader went away (cellgate closed it: the client left).
    cut = started = whole = gone = False

    def __init__(self, stdin, stdout, stderr, environ):
        BaseCGIHandler.__init__(self, stdin, stdout, stderr, environ, multithread=False, multiprocess=True)

    def cleanup_headers(self):
        # Checked here, just before the head is written and headers_sent
        # set, so that a refusal gets wsgiref's 500 whole; not in
        # start_response, whose Headers keep the app's own list, which the
        # app may change after it. The check is of a copy, which replaces
        # them. Values are not quoted in the error: they may be secrets.
        headers = []
        for name, value in self.headers.items():
            if type(name) is not str or not TOKEN.fullmatch(name):
                raise ValueError("response header name %r is not an HTTP token" % (name,))
            check_field("the value of response header %r" % name, value)
            headers.append((name, value))
        check_field("the response's status", self.status)
        self.headers = self.headers_class(headers)
        BaseCGIHandler.cleanup_headers(self)

    def run(self, application):
        # wsgiref's, but for the errors it takes for its client going away
        # (a broken pipe, a reset connection): only those of writing the
        # response are; the app's own (an upstream it reads reset its
        # connection) are its failures, which handle_error answers. wsgiref
        # dropped them: a 200 cut short passed on as whole, or no response
        # and no traceback.
        try:
            self.setup_environ()
            self.result = application(self.environ, self.start_response)
            self.finish_response()
        except BaseException:
            if self.gone:
                return
            try:
                self.handle_error()
            except BaseException:
                self.close()
                raise

    def _write(self, data):
        try:
            BaseCGIHandler._write(self, data)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.gone = True
            raise

    def _flush(self):
        try:
            BaseCGIHandler._flush(self)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.gone = True
            raise

    def send_preamble(self):
        # Called by send_headers once the head passed cleanup_headers,
        # as it writes it.
        self.started = True
        BaseCGIHandler.send_preamble(self)

    def finish_content(self):
        if not self.headers_sent and self.environ.get("REQUEST_METHOD") == "HEAD":
            # No body written: wsgiref would say Content-Length: 0, which
            # is not the length of the GET's body a HEAD's head describes.
            self.send_headers()
        else:
            BaseCGIHandler.finish_content(self)
        self.whole = True

    def handle_error(self):
        # Once the head is out, the response cannot be replaced: a failure
        # before it was whole cuts it (the child ends by a fault, so that
        # cellgate does not pass on what was sent as complete: a 200 cut
        # short, given a Content-Length when spooled); one after (the
        # close() of the app's iterable) is logged, the response stands.
        # wsgiref's own, whose close() resets headers_sent, wrote a 500
        # after the whole response then. Noted first, in case the logging
        # fails too.
        if self.started:
            self.cut = not self.whole
            self.log_exception(sys.exc_info())
            return
        BaseCGIHandler.handle_error(self)


def crash():
    """End the child as a crashed worker ends, by a signal: cellgate fails
    the request then (a 502, a cut stream), where any exit status passes
    the response on. Never returns."""
    # The child is the init of a PID namespace of its own (under a user
    # namespace), which the kernel spares every signal sent from inside
    # it, SIGKILL to itself and abort's SIGABRT included, but a fault's:
    # so a read at address 0 (strlen), with SIGSEGV's default action back
    # (an app's faulthandler would catch it) and no core (setresuid may
    # have made the process dumpable again).
    try:
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)
        ctypes.string_at(0)
    finally:
        os._exit(1)


def serve_one(app, setup, req, fds, sock):
    """The child: become the request's process and serve it. Never returns."""
    code, cut = 1, False
    try:
        # The response goes out on an fd of its own, close-on-exec (os.dup)
        # and written by the handler only; fd 1, where the app's print and
        # any logging it set up on sys.stdout write, is the request's
        # stderr, which cellgate logs (as gunicorn does with an app's
        # output).
        response = os.dup(fds[1])
        os.dup2(fds[0], 0)
        os.dup2(fds[2], 1)
        os.dup2(fds[2], 2)
        # What the request's code must not reach: the socket (it could
        # answer cellgate as the preloader) and the spawn's fds (the
        # cell's cgroup directory; the rest, inheritable as received, are
        # copies of its stdio). The app's own fds, such as a log file it
        # opened at import, stay open: closing them would let the request
        # reuse their numbers under the app's file objects.
        sock.close()
        for fd in set(fds) - {0, 1, 2}:
            os.close(fd)
        # Its own /tmp, /var/tmp, /dev/shm (charged to its cell, gone with
        # its mount namespace) and /proc, over the preloader's.
        setup.mount()
        uid = req["uid"]
        if uid >= 0:
            # A uid other than the preloader's 0: no capabilities left, and
            # the kernel's uid checks fence the child off from the preloader
            # and from other requests.
            os.setresuid(uid, uid, uid)
        # The request's exact bytes, each one a code point of the message
        # (latin-1), into the environment; the handler's environ is then
        # what CGIHandler makes of them (read_environ) in a cgi route.
        os.environ.clear()
        for kv in req["env"]:
            key, _, value = kv.encode("latin-1").partition(b"=")
            os.environb[key] = value
        # What the app's import did to its environment, as a cgi route's
        # import does it to each request's (setdefault of its settings),
        # where the variable is the route's (as the preloader had it) or
        # absent: a meta-variable of the request's own (HTTPS,
        # SCRIPT_NAME, a header) stands over the import's default.
        set_, removed, before = app_environ
        for key, value in set_.items():
            if os.environb.get(key) in (None, before.get(key)):
                os.environb[key] = value
        for key in removed:
            if os.environb.get(key) == before.get(key):
                os.environb.pop(key, None)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", buffering=1, errors="backslashreplace", closefd=False)
        # Like Python's own stderr: line-buffered, so that a line written
        # is out before a kill (deadline, OOM), and escaping what it
        # cannot encode instead of failing the request.
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
        setup.seccomp()
        response = open(response, "wb")
        handler = Handler(sys.stdin.buffer, response, sys.stderr, read_environ())
        try:
            handler.run(app)
        finally:
            cut = handler.cut
        response.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        code = 0
    except BaseException:
        try:
            traceback.print_exc()
            sys.stderr.flush()
        except BaseException:
            pass
    if cut:
        # What was written goes out before the fault: the response's part
        # (a streamed response's client has it), the app's output, the
        # traceback, and a line that explains the signal in the log.
        for flush in (response.flush, sys.stdout.flush, lambda: print(
                "cellgate: the app failed after its response had started: its process ends by SIGSEGV, "
                "so that the response is not passed on as whole", file=sys.stderr, flush=True)):
            try:
                flush()
            except BaseException:
                pass
        crash()
    os._exit(code)


# MAX_TRACEBACK bounds the import error sent to cellgate (its tail, in
# characters): JSON escapes a character to 12 bytes at most, and a
# datagram larger than the socket's send buffer (about 208 KiB) would not
# go at all.
MAX_TRACEBACK = 16 << 10


def threads():
    """The process's threads: those the threading module knows, and those
    C extensions start on their own (OpenBLAS, gRPC), which it does not."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def main():
    _, app_ref, app_dir, setup = sys.argv
    sock = socket.socket(fileno=SOCK_FD)
    # Not dumpable: a child (same user namespace) cannot ptrace the
    # preloader or read its memory or environment through /proc.
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    global app_environ
    before = dict(os.environb)
    try:
        setup = Setup(setup)
        os.chdir(app_dir)
        sys.path.insert(0, app_dir)
        module, _, name = app_ref.partition(":")
        app = getattr(importlib.import_module(module), name)
        if not callable(app):
            raise TypeError("%s is a %s, not a WSGI callable" % (app_ref, type(app).__name__))
        n = threads()
        if n != 1:
            raise RuntimeError("importing %s started threads (%d in all); a preloader must stay single-threaded to clone safely "
                               "(a C extension's pool: set its size to 1 in the route's env, e.g. OPENBLAS_NUM_THREADS=1)" % (app_ref, n))
    except BaseException:
        tb = traceback.format_exc()
        if len(tb) > MAX_TRACEBACK:
            tb = "[%d characters cut]\n" % (len(tb) - MAX_TRACEBACK) + tb[-MAX_TRACEBACK:]
        send(sock, {"type": "error", "error": tb})
        os._exit(1)
    after = dict(os.environb)
    app_environ = ({k: v for k, v in after.items() if before.get(k) != v}, [k for k in before if k not in after], before)
    sys.stdout.flush()
    sys.stderr.flush()
    gc.collect()
    gc.freeze()  # the collector leaves the preloaded objects' pages shared
    send(sock, {"type": "ready", "pid": os.getpid(), "runtime": "python-wsgi"})
    while True:
        req, fds = receive(sock)
        received = time.monotonic_ns()
        if req is None:
            os._exit(0)
        rid = req.get("id", 0) if isinstance(req, dict) else 0
        try:
            if req.get("v") != VERSION or req.get("type") != "spawn":
                raise ValueError("unsupported message: version %r type %r" % (req.get("v"), req.get("type")))
            want = 4 if req.get("cgroup") else 3
            if len(fds) != want:
                raise ValueError("spawn with %d fds, want %d" % (len(fds), want))
            pid, pidfd = clone_into(fds[3] if want == 4 else -1, setup.flags)
            if pid == 0:
                serve_one(app, setup, req, fds, sock)
            try:
                # Its own part of the hand-off, from the spawn read to
                # clone3's return: the rest is cellgate's and the socket's.
                clone_us = (time.monotonic_ns() - received) // 1000
                send(sock, {"type": "spawned", "id": rid, "pid": pid, "clone_us": clone_us}, [pidfd])
            finally:
                os.close(pidfd)
        except (OSError, ValueError, KeyError, TypeError) as e:
            send(sock, {"type": "error", "id": rid, "error": str(e)})
        finally:
            for fd in fds:
                os.close(fd)


main()
