// Package proxy is cellgate's front: the HTTP/1.1 and HTTP/2 server with its
// timeouts and limits, request buffering, CGI/1.1 meta-variables, parsing and
// spooling of the worker's response, and the one mapping from outcomes to
// HTTP statuses. It does not touch the kernel: cells are run through package
// sandbox. It is imported only by cmd/cellgate.
package proxy
