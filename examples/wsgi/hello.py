"""A WSGI hello without dependencies, for the fork driver (examples/policy.yaml).

Besides the greeting it answers a few test requests that show what a cell
is: ?mb=N allocates N MiB (over the route's memory the request is
OOM-killed, the preloader lives), ?ms=N sleeps, ?pid=1 tells the pid it
sees for itself (1 in its own PID namespace).
"""

import os
import time


def app(environ, start_response):
    q = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
    ballast = bytearray(int(q.get("mb", "0")) << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # touch every page: charged to this request's cell
    time.sleep(int(q.get("ms", "0")) / 1000)
    body = "hello from pid %d uid %d\n" % (os.getpid(), os.getuid())
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body.encode()]
