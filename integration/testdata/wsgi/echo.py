"""The fork driver's stream probe (integration/fork_test.go): the app reads
its whole body (CONTENT_LENGTH bytes, in the chunks the query's chunk=
asks for) and answers it ?times=N times, one chunk of the answer per
copy, so that a body and an answer larger than a pipe cross the cell's
standard streams.
"""


def app(environ, start_response):
    q = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
    want = int(environ.get("CONTENT_LENGTH") or 0)
    chunk = int(q.get("chunk", "0")) or want or 1
    stream = environ["wsgi.input"]
    parts = []
    got = 0
    while got < want:
        part = stream.read(min(chunk, want - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    body = b"".join(parts)
    times = int(q.get("times", "1"))
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body) * times))])
    return [body] * times
