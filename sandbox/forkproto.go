package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// The preloader protocol, version 3 (DESIGN.md "Preloader protocol"):
// JSON messages, one per SOCK_SEQPACKET datagram, on the preloader's fd 3.
// The preloader speaks first (ready or error), then answers each spawn
// with spawned (and the child's pidfd) or error, one at a time, in order.
// cellgate closing the socket tells the preloader to exit.
const (
	protoVersion = 3
	// maxMessage bounds a message either way: a spawn carries the
	// request's CGI variables, which the front bounds (header bytes), and
	// an error carries an import traceback.
	maxMessage = 1 << 20
	// dgramOverhead: a datagram of an AF_UNIX socket may be at most its
	// send buffer (SO_SNDBUF) less this (net/unix/af_unix.c); larger is
	// EMSGSIZE.
	dgramOverhead = 32
	// maxImportError is the most of an import's error message kept (its
	// end): the longest the preloader's own traceback can be (it keeps
	// its last MAX_TRACEBACK, 16 Ki, characters, of up to 4 bytes each,
	// after a line saying how many it cut). What an app's own code sends
	// in its place is no longer, so that each restart's log line stays
	// bounded.
	maxImportError = 4*(16<<10) + 64
	// maxRefusal is the most of a spawn refusal's message kept, for the
	// request's log line.
	maxRefusal = 1 << 10
)

// lastOf returns the last n bytes of s at most, from a character's start,
// marked as cut when they are not the whole.
func lastOf(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := len(s) - n
	for i < len(s) && !utf8.RuneStart(s[i]) {
		i++
	}
	return fmt.Sprintf("[%d bytes cut]\n", i) + s[i:]
}

// Message types.
const (
	msgReady   = "ready"   // preloader -> cellgate: the app is imported, requests may come
	msgError   = "error"   // preloader -> cellgate: at start, the app failed (then it exits); after a spawn, nothing was started
	msgSpawn   = "spawn"   // cellgate -> preloader: start a child for one request (fds: stdin, stdout, stderr[, cell])
	msgSpawned = "spawned" // preloader -> cellgate: the child runs (fd: its pidfd)
)

// message is every message of the protocol; each type uses some fields.
type message struct {
	V    int    `json:"v"`
	Type string `json:"type"`
	// ID matches a spawn with its answer.
	ID uint64 `json:"id,omitempty"`

	// ready: the preloader's pid and runtime.
	Runtime string `json:"runtime,omitempty"`
	// ready: the preloader's pid; spawned: the child's pid (in cellgate's
	// PID namespace).
	Pid int `json:"pid,omitempty"`

	// spawn: the child's uid in the preloader's user namespace; -1 keeps
	// the preloader's own (only for a preloader without a user namespace).
	UID *int64 `json:"uid,omitempty"`
	// spawn: the child's whole environment, "KEY=value", each byte a
	// code point U+0000..U+00FF (latin1): the request's bytes, UTF-8 or
	// not, survive JSON.
	Env []string `json:"env,omitempty"`
	// spawn: whether the fourth fd is the cell's cgroup directory (clone3
	// CLONE_INTO_CGROUP); false only for a cell without a cgroup (tests).
	Cgroup bool `json:"cgroup,omitempty"`
	// spawn: the wall-clock deadline after which cellgate kills the cell,
	// in Unix milliseconds; informational (the kill does not depend on
	// it).
	Deadline int64 `json:"deadline_ms,omitempty"`

	// spawned: the preloader's own part of the hand-off, from reading the
	// spawn to clone3's return in the preloader, in microseconds
	// (optional; Result.Clone).
	CloneUS int64 `json:"clone_us,omitempty"`

	// error: what went wrong (at start: the import's traceback).
	Error string `json:"error,omitempty"`
}

// errProtocol: a preloader sent something the protocol does not allow. The
// preloader is not trusted further: it is stopped and restarted.
var errProtocol = errors.New("preloader protocol violation")

// spawnMessage builds the spawn of request id.
func spawnMessage(id uint64, nsUID int64, env []string, cgroup bool, deadline time.Time) ([]byte, error) {
	m := message{V: protoVersion, Type: msgSpawn, ID: id, UID: &nsUID, Env: latin1(env), Cgroup: cgroup, Deadline: deadline.UnixMilli()}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode spawn: %w", err)
	}
	if len(b) > maxMessage {
		return nil, fmt.Errorf("spawn of %d bytes exceeds the protocol's %d (a request with huge headers): %w", len(b), maxMessage, ErrRequestTooLarge)
	}
	return b, nil
}

// parseMessage decodes a preloader's message and checks its version, its
// type against want (one of them) and the number of fds it came with.
func parseMessage(b []byte, nfds int, want ...string) (*message, error) {
	var m message
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: %d bytes that are not a JSON message: %w", errProtocol, len(b), err)
	}
	if m.V != protoVersion {
		return nil, fmt.Errorf("%w: version %d, this cellgate speaks %d", errProtocol, m.V, protoVersion)
	}
	ok := false
	for _, w := range want {
		ok = ok || m.Type == w
	}
	if !ok {
		return nil, fmt.Errorf("%w: message %q, want one of %q", errProtocol, m.Type, want)
	}
	wantFDs := 0
	if m.Type == msgSpawned {
		wantFDs = 1
	}
	if nfds != wantFDs {
		return nil, fmt.Errorf("%w: %q with %d fds, want %d", errProtocol, m.Type, nfds, wantFDs)
	}
	if (m.Type == msgSpawned || m.Type == msgReady) && m.Pid <= 0 {
		return nil, fmt.Errorf("%w: %q without a pid", errProtocol, m.Type)
	}
	return &m, nil
}

// latin1 maps each byte of each string to the code point of the same
// value, which JSON carries whole; json.Marshal would replace bytes that
// are not UTF-8 (a request's PATH_INFO of /caf%E9) with U+FFFD. The
// preloader encodes the strings as latin-1 to get the bytes back.
func latin1(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		ascii := true
		for j := 0; j < len(s) && ascii; j++ {
			ascii = s[j] < utf8.RuneSelf
		}
		if ascii {
			out[i] = s
			continue
		}
		r := make([]rune, len(s))
		for j := 0; j < len(s); j++ {
			r[j] = rune(s[j])
		}
		out[i] = string(r)
	}
	return out
}
