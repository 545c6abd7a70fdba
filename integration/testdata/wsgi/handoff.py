"""The fork driver's hand-off probe (integration/fork_test.go): each
preloader of it kills itself right after it cloned its second child, before
it hands the child over to cellgate, so that the request is caught in the
hand-off. That child lingers in the preloader's fork hooks, before it
takes the request's uid, so that cellgate ends it before it ran any of
the request. The app echoes its body.
"""

import os
import signal
import time

spawns = 0


def after_clone():
    global spawns
    spawns += 1
    if spawns == 2:
        os.kill(os.getpid(), signal.SIGKILL)


def in_child():
    if spawns == 1:  # the second clone: the parent counts after it
        time.sleep(5)


os.register_at_fork(after_in_parent=after_clone, after_in_child=in_child)


def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
