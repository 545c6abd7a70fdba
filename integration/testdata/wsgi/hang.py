"""An app whose import never ends: serve, stopped while it imports (at its
start or in a reload), must abandon it at once."""

import sys
import time

print("hang: importing", flush=True)
sys.stdout.flush()
while True:
    time.sleep(1)


def app(environ, start_response):
    raise AssertionError("never imported")
