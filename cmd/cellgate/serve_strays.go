package main

import (
	"log/slog"

	"github.com/cellgate/cellgate/sandbox"
	"github.com/prometheus/client_golang/prometheus"
)

// newStrayReaper returns the reaper of stray zombies when serve runs as
// pid 1, the init of its PID namespace (the image's entrypoint, the
// Kubernetes Deployment), and nil otherwise: only an init inherits the
// orphans of other processes (sandbox/strays.go). Without it, each
// process a cell leaves in that namespace would stay a zombie holding a
// pid of the tenant's and the container's pids.max.
func newStrayReaper(log *slog.Logger, pid int) *sandbox.StrayReaper {
	if pid != 1 {
		return nil
	}
	s, err := sandbox.NewStrayReaper(sandbox.StrayConfig{Logger: log})
	if err != nil {
		log.Warn("serve is pid 1 but cannot reap stray zombies: processes orphaned in its PID namespace will stay zombies and hold their pids", "err", err)
		return nil
	}
	log.Info("serve is pid 1: reaping stray zombies", "interval", s.Interval(), "children_files", s.ListsChildren())
	return s
}

// strayCounter exports the strays reaped.
func strayCounter(s *sandbox.StrayReaper) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "cellgate", Name: "stray_zombies_reaped_total",
		Help: "Zombies serve reaped as pid 1 that nothing in it waited for: processes orphaned in its PID namespace, ended by their cell's kill or on their own."},
		func() float64 { return float64(s.Reaped()) })
}
