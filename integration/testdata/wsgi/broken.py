"""An app whose import fails: serve must refuse it, a reload must keep the
previous policy."""

import no_such_module_cellgate_test  # noqa: F401


def app(environ, start_response):
    raise AssertionError("never imported")
