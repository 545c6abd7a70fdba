"""The fork driver's output probe (integration/fork_test.go): logging set
up at import on sys.stdout and print in the view, which must reach the
request's stderr (serve's log), not its response, and a file opened at
import (/dev/null), which the request writes. It answers what it was given of
PATH_INFO and X-Name, as Python's ascii() of wsgiref's environ values.
"""

import logging
import os
import sys

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s:%(message)s")
LOG = open(os.devnull, "w")  # a fd of the app's own, opened in the preloader


def app(environ, start_response):
    logging.info("stdio probe handling %s", environ["PATH_INFO"].encode("latin-1").hex())
    print("stdio probe printed in the view")
    LOG.write("from the request\n")
    LOG.flush()
    body = ascii((environ["PATH_INFO"], environ.get("HTTP_X_NAME"))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
