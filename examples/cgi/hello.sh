#!/bin/sh
# hello.sh: a CGI program is just a program. The request arrives in the
# environment (REQUEST_METHOD, QUERY_STRING, ...) and on stdin; the response is
# a header block, a blank line and the body, on stdout.
printf 'Content-Type: text/plain\r\n\r\n'
printf 'hello from a cell (%s %s%s, query "%s")\n' "$REQUEST_METHOD" "$SCRIPT_NAME" "$PATH_INFO" "$QUERY_STRING"
