package vm

// Spec is what the guest runs, written into the initramfs as /vmrun.json.
type Spec struct {
	Args    []string // argv; Args[0] is a path in the shared root
	Dir     string   // working directory in the shared root
	Env     []string // environment, TMPDIR already pointing at GuestTmp
	Modules []string // module files in the initramfs, in load order
	Marker  string   // prefix of the status line, unique per run
	Alive   string   // the line /init prints first: the guest's sign of life, unique per run
	Network bool     // configure the virtio-net interface (for -forward)
	Control bool     // forward the signals read from GuestControlTTY to the program
	Systemd bool     // boot systemd as pid 1 and run the program as its service (systemd.go)
}

// Guest paths.
const (
	SpecPath   = "vmrun.json" // the Spec, in the initramfs
	modulesDir = "modules"
	newRoot    = "/newroot"
	// GuestScratch is a tmpfs in the guest's view of the shared root. The
	// host's /run is always a directory, and a tmpfs over it does not hide
	// the test binary (go test leaves it under /tmp).
	GuestScratch = "/run"
	// GuestTmp is the TMPDIR the program sees, inside GuestScratch.
	GuestTmp = "/run/vmrun-tmp"
)
