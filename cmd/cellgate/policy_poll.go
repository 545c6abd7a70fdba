package main

import (
	"crypto/sha256"
	"errors"
	"log/slog"
	"time"

	"github.com/cellgate/cellgate/policy"
)

// policyRetryMax bounds the back-off between the poller's retries of a
// reload that failed for a reason that may pass.
const policyRetryMax = 5 * time.Minute

// policyPoller reloads the policy when the content of its file changes
// (--policy-poll): a Kubernetes ConfigMap mounted as a directory is
// replaced in place by the kubelet, which sends no signal. It compares
// contents, not times: the kubelet swaps a symlink, and an editor may keep
// the time. It compares them with the policy in force, whoever loaded it
// (start-up, SIGHUP, cellgate reload, the poller), so that it never
// reloads what serves already, and it learns each reload's verdict: a
// content refused as invalid is not reloaded again until the file
// changes, one whose reload failed otherwise (a preloader that did not
// start in time, a budget the kernel refused, a program or user the host
// does not have yet: hostProblems) is retried with back-off.
type policyPoller struct {
	path  string
	log   *slog.Logger
	every time.Duration // the interval of the checks, the first retry's wait
	// inForce is the digest of the policy serving now
	// (policy.Policy.Digest).
	inForce func() [sha256.Size]byte
	bad     bool // the last read failed (logged once until it succeeds)

	// failed is the content whose reload failed last; invalid: as an
	// invalid policy (policy.ErrInvalid), not retried. Otherwise it is
	// retried from retryAt, retry after the last failure.
	failed  [sha256.Size]byte
	invalid bool
	retry   time.Duration
	retryAt time.Time
}

func newPolicyPoller(path string, log *slog.Logger, every time.Duration, inForce func() [sha256.Size]byte) *policyPoller {
	return &policyPoller{path: path, log: log, every: every, inForce: inForce}
}

// due reads the file at now and returns its content's digest and whether
// a reload of it is to be asked for now. A file that cannot be read, or
// one larger than a policy may be (policy.MaxFileSize: it is read no
// further), is no change (serve keeps its policy); the failure is logged
// once.
func (p *policyPoller) due(now time.Time) ([sha256.Size]byte, bool) {
	b, err := policy.ReadFile(p.path)
	if err != nil {
		if !p.bad {
			p.log.Warn("policy poll: cannot read the policy file; keeping the running policy", "policy", p.path, "err", err)
		}
		p.bad = true
		return [sha256.Size]byte{}, false
	}
	p.bad = false
	sum := sha256.Sum256(b)
	switch {
	case sum == p.inForce():
		p.forget() // it serves: what failed before is past
		return sum, false
	case sum != p.failed:
		p.forget() // a content not tried yet
		return sum, true
	case p.invalid:
		return sum, false // until the file changes
	}
	return sum, !now.Before(p.retryAt)
}

// record takes the verdict of the reload asked for the content sum at now.
func (p *policyPoller) record(sum [sha256.Size]byte, err error, now time.Time) {
	if err == nil {
		p.forget()
		return
	}
	p.failed = sum
	if p.invalid = errors.Is(err, policy.ErrInvalid) && !errors.As(err, new(*hostProblems)); p.invalid {
		p.log.Warn("policy poll: the policy file is invalid; keeping the running policy until the file changes", "policy", p.path)
		return
	}
	p.retry = min(max(2*p.retry, p.every), max(policyRetryMax, p.every))
	p.retryAt = now.Add(p.retry)
	p.log.Warn("policy poll: the reload failed; keeping the running policy and retrying", "policy", p.path, "retry_in", p.retry)
}

func (p *policyPoller) forget() {
	p.failed, p.invalid, p.retry, p.retryAt = [sha256.Size]byte{}, false, 0, time.Time{}
}

// run checks the file at each tick until stop is closed; when a reload is
// due it asks serve's loop for one (a reload already asked for there
// covers it) and waits for its verdict.
func (p *policyPoller) run(stop <-chan struct{}, tick <-chan time.Time, reloads *reloadRequests) {
	for {
		var now time.Time
		select {
		case <-stop:
			return
		case now = <-tick:
		}
		sum, ok := p.due(now)
		if !ok {
			continue
		}
		if sum == p.failed {
			p.log.Info("policy poll: retrying the reload of the policy file", "policy", p.path)
		} else {
			p.log.Info("policy poll: the policy file changed; reloading", "policy", p.path)
		}
		select {
		case err := <-reloads.ask():
			p.record(sum, err, now)
		case <-stop:
			return
		}
	}
}
