"""The Flask hello of examples/policy.yaml: the same app behind /flask (the
fork driver: imported once) and /flask-cgi (the cgi driver: Python starts
and imports Flask for every request, through cgi/flask-hello.cgi)."""

from flask import Flask

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello from Flask!\n"
