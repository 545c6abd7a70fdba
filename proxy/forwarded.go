package proxy

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
)

// Behind a load balancer. A request from a peer in Config.TrustedProxies
// names its client in X-Forwarded-For; from anyone else the header is
// never believed (it is passed to the worker as HTTP_X_FORWARDED_FOR, as
// any header, and nothing more). The client is the rightmost address not
// itself a trusted proxy: each proxy appends the address it received the
// request from, so entries right of the nearest untrusted one were written
// by proxies the operator trusts, and entries left of it by whoever sent
// the request, who may have forged them.
//
// The forwarded client becomes REMOTE_ADDR, the access log's client and
// the key of the per-IP cap. That cap counts connections at accept, before
// any header is read, so a trusted proxy's connections are exempt from it
// (they carry many clients); its requests count instead, each against its
// forwarded client's in-flight requests, with the same limit
// (MaxConnsPerIP): over it, 503 with Retry-After.

// forwardedClient returns the client a trusted peer forwards the request
// for; ok is false when the peer is not trusted, sends no
// X-Forwarded-For, or an entry does not parse (the peer is then the
// client).
func forwardedClient(trusted []netip.Prefix, peer netip.Addr, h http.Header) (netip.Addr, bool) {
	if !isTrusted(trusted, peer) {
		return netip.Addr{}, false
	}
	var entries []string
	for _, v := range h.Values("X-Forwarded-For") {
		entries = append(entries, strings.Split(v, ",")...)
	}
	for i := len(entries) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(entries[i]))
		if err != nil || a.Zone() != "" {
			// A zone (fe80::1%eth0) is any text the client chose, and no
			// trusted prefix contains a zoned address: it would become
			// the client, its zone REMOTE_ADDR's and a per-IP cap's key.
			return netip.Addr{}, false
		}
		a = a.Unmap()
		if !isTrusted(trusted, a) {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// peerIP is the IP of a request's RemoteAddr ("ip:port"), unmapped.
func peerIP(remoteAddr string) netip.Addr {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func isTrusted(trusted []netip.Prefix, a netip.Addr) bool {
	return a.IsValid() && slices.ContainsFunc(trusted, func(p netip.Prefix) bool { return p.Contains(a) })
}

// ParseTrustedProxies parses "CIDR,CIDR,..." (a bare address is one
// host), as --trusted-proxies gives it.
func ParseTrustedProxies(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR prefix (10.0.0.0/8, fd00::/8) nor an address", f)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// clientRequests counts the requests in flight per forwarded client.
type clientRequests struct {
	mu sync.Mutex
	n  map[netip.Addr]int // only clients with requests in flight
}

// acquire counts a request of a, unless a has max (> 0) in flight.
func (c *clientRequests) acquire(a netip.Addr, max int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if max > 0 && c.n[a] >= max {
		return false
	}
	if c.n == nil {
		c.n = map[netip.Addr]int{}
	}
	c.n[a]++
	return true
}

func (c *clientRequests) release(a netip.Addr) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[a] <= 1 {
		delete(c.n, a)
	} else {
		c.n[a]--
	}
}
