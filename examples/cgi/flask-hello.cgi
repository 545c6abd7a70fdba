#!/usr/bin/python3 -I
"""examples/wsgi/flask_hello.py as a CGI program: the baseline of the fork
driver (every request starts Python and imports Flask)."""

import os
import sys
from wsgiref.handlers import CGIHandler

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "wsgi"))
from flask_hello import app  # noqa: E402

CGIHandler().run(app)
