// Command cellgate-init is the init of a confined cell: the sandbox starts
// it inside the cell's cgroup and new namespaces, it applies the route's
// confinement plan and runs the program (see package confine). It is a
// binary of its own, next to cellgate, because a process started per
// request must start fast: it links nothing but package confine, where
// cellgate's package initialisation alone costs several times a whole small
// Go program's start (measured with GODEBUG=inittrace=1). It is never run
// by hand.
package main

import (
	"os"

	"github.com/cellgate/cellgate/confine"
)

func main() {
	switch {
	case len(os.Args) == 1 && os.Args[0] == confine.InitArg0:
		os.Exit(confine.Init())
	case len(os.Args) == 2 && os.Args[0] == confine.InitArg0 && os.Args[1] == confine.ExecArg:
		os.Exit(confine.InitExec()) // a fork route's preloader
	}
	os.Stderr.WriteString("cellgate-init is started by cellgate for each confined cell, never by hand\n")
	os.Exit(2)
}
