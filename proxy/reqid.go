package proxy

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"fmt"
	"sync/atomic"
)

// RequestIDHeader carries the request id on every response. A client's own
// X-Request-Id is ignored: the id names a log record and a cell, and a
// client could otherwise make two requests look like one.
const RequestIDHeader = "X-Request-Id"

// idEncoding is lower-case base32hex without padding: ids sort like the
// counter they carry and are safe in a path or a cgroup name.
var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// idSource makes request ids: 15 bytes, a random 7-byte prefix drawn once
// per Server (so ids from different processes or restarts do not collide)
// and an 8-byte counter, written as 24 base32 characters. No randomness per
// request, one allocation.
type idSource struct {
	prefix [7]byte
	n      atomic.Uint64
}

func newIDSource() (*idSource, error) {
	s := &idSource{}
	if _, err := rand.Read(s.prefix[:]); err != nil {
		return nil, fmt.Errorf("request id prefix: %w", err)
	}
	return s, nil
}

func (s *idSource) next() string {
	var raw [15]byte
	copy(raw[:], s.prefix[:])
	binary.BigEndian.PutUint64(raw[7:], s.n.Add(1))
	var out [24]byte
	idEncoding.Encode(out[:], raw[:])
	return string(out[:])
}
