"""An app that starts processes at import: one in its process group, one
that leaves it (a session of its own). Both must end with the preloader
instance that imported it (a recycle, a restart), not outlive it."""

import subprocess

plain = subprocess.Popen(["sleep", "600"])
session = subprocess.Popen(["sleep", "600"], start_new_session=True)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"spawned\n"]
