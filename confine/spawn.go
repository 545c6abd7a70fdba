package confine

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// The spawner's protocol (cellgate-init spawner, sandbox/spawner.go): one
// SOCK_SEQPACKET datagram each way per spawn, in order. A request is
// SpawnRequestSize bytes, "CGS1", the options (uint32, little-endian),
// then the clone flags (uint64); it carries, as SCM_RIGHTS, the cell's
// control socket (which becomes the init's ControlFD), then the cell's
// cgroup directory (SpawnCgroup: clone3 CLONE_INTO_CGROUP), a network
// namespace to enter (SpawnNetns) and a mount template (SpawnFromTemplate:
// the init's TemplateFD, and the init copies the template), each when its
// option is set; the clone flags are CLONE_NEW* of the plan's namespaces
// only (others: EINVAL). The answer is SpawnAnswerSize bytes: the init's
// pid in the daemon's PID namespace and an errno, both int32
// little-endian; an errno that is not 0 means nothing was cloned. The
// spawner speaks first, an answer with its own pid (its hello). The init is cloned with
// CLONE_PARENT: the spawner's parent, the daemon, is the init's, and
// reaps it.
const (
	SpawnRequestSize = 16
	SpawnAnswerSize  = 8

	SpawnFromTemplate = 1 << 0
	SpawnCgroup       = 1 << 1
	SpawnNetns        = 1 << 2
)

// EncodeSpawn is a spawn request with opts and the clone flags.
func EncodeSpawn(opts uint32, cloneFlags uint64) []byte {
	b := make([]byte, SpawnRequestSize)
	copy(b, "CGS1")
	binary.LittleEndian.PutUint32(b[4:], opts)
	binary.LittleEndian.PutUint64(b[8:], cloneFlags)
	return b
}

// DecodeSpawned reads an answer: the init's pid, or the errno of a clone
// that did not happen.
func DecodeSpawned(b []byte) (int, error) {
	if len(b) != SpawnAnswerSize {
		return 0, fmt.Errorf("an answer of %d bytes from the spawner, want %d", len(b), SpawnAnswerSize)
	}
	pid := int32(binary.LittleEndian.Uint32(b))
	if e := syscall.Errno(binary.LittleEndian.Uint32(b[4:])); e != 0 {
		return 0, fmt.Errorf("clone3: %w", e)
	}
	if pid <= 0 {
		return 0, fmt.Errorf("the spawner answered pid %d", pid)
	}
	return int(pid), nil
}
