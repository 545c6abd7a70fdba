package main

import (
	"fmt"
	"os/exec"
	"syscall"
)

// spawnSelf is serve's cgroup.Options.ProbeSpawn: cellgate itself
// (`cellgate help`, which exits 0) started straight into the probe group,
// instead of cgroup.SpawnTrue's /bin/true, which a container image built
// from nothing but cellgate does not have.
func spawnSelf(cgroupFD int) error {
	cmd := exec.Command("/proc/self/exe", "help")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgroupFD}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("spawn cellgate (/proc/self/exe) into a cgroup (clone3 CLONE_INTO_CGROUP, Linux 5.7): %w", err)
	}
	return nil
}
