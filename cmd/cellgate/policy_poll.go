package main

import (
	"crypto/sha256"
	"log/slog"
	"os"
	"time"
)

// policyPoller reloads the policy when the content of its file changes
// (--policy-poll): a Kubernetes ConfigMap mounted as a directory is
// replaced in place by the kubelet, which sends no signal. It compares
// contents, not times: the kubelet swaps a symlink, and an editor may keep
// the time.
type policyPoller struct {
	path string
	log  *slog.Logger
	last [sha256.Size]byte // the content last loaded or read
	bad  bool              // the last read failed (logged once until it succeeds)
}

// newPolicyPoller starts from loaded, the digest of the content serve
// loaded (policy.Policy.Digest), not from a read of its own: a change made
// while serve started up (its cells, preloaders, listeners) reloads too.
func newPolicyPoller(path string, log *slog.Logger, loaded [sha256.Size]byte) *policyPoller {
	return &policyPoller{path: path, log: log, last: loaded}
}

// changed reads the file and reports whether its content differs from the
// last read. A file that cannot be read is no change (serve keeps its
// policy); the failure is logged once.
func (p *policyPoller) changed() bool {
	b, err := os.ReadFile(p.path)
	if err != nil {
		if !p.bad {
			p.log.Warn("policy poll: cannot read the policy file; keeping the running policy", "policy", p.path, "err", err)
		}
		p.bad = true
		return false
	}
	p.bad = false
	sum := sha256.Sum256(b)
	if sum == p.last {
		return false
	}
	p.last = sum
	return true
}

// run checks the file every interval until stop is closed; on a change it
// asks serve's loop for a reload (a reload already asked for there covers
// it).
func (p *policyPoller) run(stop <-chan struct{}, every time.Duration, reloads *reloadRequests) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		if !p.changed() {
			continue
		}
		p.log.Info("policy poll: the policy file changed; reloading", "policy", p.path)
		reloads.ask()
	}
}
