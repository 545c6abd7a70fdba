# cellgate's build and tests. `make test` is what CI runs: it installs what
# the microVM needs (qemu, a Debian kernel) by itself, on a Debian 12 host
# with Go.

GO      ?= go
BIN     := $(abspath bin)
VMRUN   := $(BIN)/vmrun
# The VM's own timeout is longer than go test's, so that a hung test ends
# with the test binary's own panic and goroutine dump, not a killed VM.
VMFLAGS ?= -mem 2G -smp 2 -timeout 35m
TESTENV := CELLGATE_REQUIRE_KERNEL_TESTS=1 CELLGATE_BIN=$(BIN)/cellgate

.PHONY: build vmrun vet unit vm-prepare vm-check integration test test-native bench

build:
	$(GO) build -o $(BIN)/cellgate ./cmd/cellgate

# Static: the same binary is the guest's /init.
vmrun:
	CGO_ENABLED=0 $(GO) build -o $(VMRUN) ./integration/vm/cmd/vmrun

vet:
	$(GO) vet ./...

unit:
	$(GO) test -count=1 -timeout 10m ./...

# Installs qemu-system-x86 and fetches the kernel into .cache/vm, once.
vm-prepare: vmrun
	$(VMRUN) -prepare

# The runner must carry the guest's exit status out: 1 from /bin/false,
# 0 from /bin/true.
vm-check: vm-prepare
	@status=0; $(VMRUN) -timeout 5m /bin/false || status=$$?; \
	if [ $$status -ne 1 ]; then echo "vm-check: vmrun /bin/false exited $$status, want 1"; exit 1; fi
	$(VMRUN) -timeout 5m /bin/true
	@echo "vm-check: guest exit status carried out (false=1, true=0)"

integration: build vm-prepare
	$(TESTENV) $(GO) test -count=1 -timeout 30m -exec "$(VMRUN) $(VMFLAGS)" ./integration/

test: vet unit vm-check integration

# The integration tests without the VM, on a host with a delegated cgroup v2
# (memory, cpu and pids enabled in this process's group), as root.
test-native: build
	$(TESTENV) $(GO) test -count=1 -timeout 30m ./integration/

bench: build vm-prepare
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(TESTENV) $(GO) test -run '^$$' -bench . -benchmem -timeout 30m -exec "$(VMRUN) $(VMFLAGS)" ./integration/
