package proxy

import (
	"errors"
	"net"
	"syscall"
)

// ListenerGone reports whether an accept error is the listener's: it is
// closed, or its file descriptor is not a listening socket (EBADF,
// EINVAL, ENOTSOCK, EOPNOTSUPP), so that no later accept can succeed.
// Any other is the failure of the one connection being accepted: accept4
// refused it (ENOBUFS, ENOMEM, EPROTO, EPERM from a firewall hook), or the
// kernel took it and Go could not make it a net.Conn because its poller
// was refused the connection's registration (ENOSPC once the user's epoll
// watches, fs.epoll.max_user_watches, are all taken, by any process of
// the user; ENOMEM).
func ListenerGone(err error) bool {
	if errors.Is(err, net.ErrClosed) {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EBADF, syscall.EINVAL, syscall.ENOTSOCK, syscall.EOPNOTSUPP} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ConnFailure returns an accept error that is not the listener's
// (ListenerGone) as a temporary net.Error: net/http's Serve then logs
// it, backs off (5 ms, doubling up to 1 s) and accepts again, where it
// would otherwise return it, and serve shut down for one connection's
// failure. The listener's own errors are returned as they are.
func ConnFailure(err error) error {
	if ListenerGone(err) {
		return err
	}
	return connFailure{err}
}

// connFailure is an accept error of the connection, not the listener's.
type connFailure struct{ error }

func (e connFailure) Unwrap() error { return e.error }
func (connFailure) Timeout() bool   { return false }
func (connFailure) Temporary() bool { return true }
