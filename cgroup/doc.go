// Package cgroup owns cellgate's delegated cgroup v2 subtree: finding the
// cgroup2 mount and the process's own group, setting up the tree
// (<base>/supervisor, <base>/cells/<tenant>/<cell>), creating cells with their
// limits written, the pool of pre-created cells, killing and removing them,
// and reading what each used. It is the only package that reads or writes
// cgroupfs. It may be imported by sandbox and cmd/cellgate; accounting and
// proxy import it for the Usage type only.
//
// The life of the daemon's tree:
//
//	tree, err := cgroup.Open(ctx, cgroup.Options{Logger: log}) // locks the base, moves the daemon into <base>/supervisor
//	tenant, err := tree.Tenant("acme", budget)                 // <base>/cells/acme with its limits
//	prof, err := cgroup.NewProfile("acme", limits)             // converted and validated once
//	pool := cgroup.NewPool(tree, cgroup.PoolOptions{Logger: log})
//	...
//	pool.Close() // then
//	tree.Close()
//
// and of one request's cell (sandbox does this):
//
//	c, err := pool.Get(ctx, prof) // limits already written
//	attr := &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: c.FD()}
//	... start the worker, wait for it ...
//	c.Kill(); c.WaitEmpty(ctx); u, err := c.Usage()
//	pool.Release(c) // removed in the background
//
// Everything per request is raw cgroupfs through golang.org/x/sys/unix,
// relative to the cell's directory fd, and the files read or written at a
// request's end (cgroup.events, cgroup.kill, the accounting) are opened when
// the cell is created and read with one pread each (see Cell): containerd/cgroups exposes no fd, no
// wait for empty, and writes each value by path (2-4x slower;
// containerd/cgroups v3.1.3, cgroup2/manager.go: Manager, setResources,
// Delete); its OCI conversion (cgroup2/utils.go ToResources) writes values
// the kernel rejects, so Convert is this package's own.
package cgroup
