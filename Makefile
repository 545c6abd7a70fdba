# cellgate's build and tests. `make test` is what CI runs: it installs what
# the microVM needs (qemu, a Debian kernel) by itself, on a Debian 12 host
# with Go.

GO      ?= go
BIN     := $(abspath bin)
VMRUN   := $(BIN)/vmrun
# The VM's own timeout is longer than go test's, so that a hung test ends
# with the test binary's own panic and goroutine dump, not a killed VM.
# Each suite's go test timeout is about twice what it takes in the
# emulated microVM (integration 9 min, integration-race 6, systemd 1.5),
# so that a hang fails `make test` within its 30 minutes, with the dump.
VMFLAGS ?= -mem 2G -smp 2
TESTENV := CELLGATE_REQUIRE_KERNEL_TESTS=1 CELLGATE_BIN=$(BIN)/cellgate CELLGATE_IMAGE=$(BIN)/image

# Installs from Debian: never a prompt, and one waits for another's dpkg
# lock instead of failing at once.
export DEBIAN_FRONTEND := noninteractive
APT_GET := apt-get -q -o DPkg::Lock::Timeout=600
# Installs and VMs must not overlap (one dpkg, two cores).
.NOTPARALLEL:

.PHONY: build cc vmrun vet unit vm-prepare vm-check integration integration-race integration-systemd test test-native bench chromium

# The version is the nearest v* tag (git describe), else a Go-style
# pseudo-version of HEAD (v0.0.0-UTCTIME-COMMIT); the commit is HEAD.
# `cellgate version`, SERVER_SOFTWARE and cellgate_build_info show them.
VERSION ?= $(shell git describe --tags --match 'v*' --dirty 2>/dev/null || \
	TZ=UTC git log -1 --abbrev=12 --date=format-local:%Y%m%d%H%M%S --format=v0.0.0-%cd-%h 2>/dev/null)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# cellgate and, beside it, the init of confined cells: C, static and small,
# because it starts once per request (cmd/cellgate-init/cellgate-init.c).
# Debian's gcc and libc6-dev are installed with apt-get when no C compiler
# is found.
CC      ?= cc
CFLAGS_INIT := -O2 -static -Wall -Wextra -Werror -Wno-format-truncation

build: cc
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/cellgate ./cmd/cellgate
	$(CC) $(CFLAGS_INIT) -o $(BIN)/cellgate-init cmd/cellgate-init/cellgate-init.c

cc:
	@command -v $(CC) >/dev/null && [ -f /usr/lib/$$(uname -m)-linux-gnu/libc.a -o -f /usr/lib/libc.a ] || { \
		$(APT_GET) install -y --no-install-recommends gcc libc6-dev || \
		{ $(APT_GET) update && $(APT_GET) install -y --no-install-recommends gcc libc6-dev; }; }

# Static: the same binary is the guest's /init.
vmrun:
	CGO_ENABLED=0 $(GO) build -o $(VMRUN) ./integration/vm/cmd/vmrun

vet:
	$(GO) vet ./...

# Under the race detector (cgo: the C compiler of cc). The preloader's
# tests need Debian's python3 (they skip without it): make test installs
# it first; the units' checks need systemd-analyze (host-tools), which
# they would skip without too.
unit: cc host-tools
	$(GO) test -race -count=1 -timeout 10m ./...

# Installs qemu-system-x86 and fetches the kernel into .cache/vm, once.
vm-prepare: vmrun
	$(VMRUN) -prepare

# The runner must carry the guest's exit status out: 1 from /bin/false,
# 0 from /bin/true; and the guest must not look chrooted to the kernel,
# which refuses user namespaces (cells, preloaders) to a chrooted process.
vm-check: vm-prepare
	@status=0; $(VMRUN) $(VMFLAGS) -timeout 5m /bin/false || status=$$?; \
	if [ $$status -ne 1 ]; then echo "vm-check: vmrun /bin/false exited $$status, want 1"; exit 1; fi
	$(VMRUN) $(VMFLAGS) -timeout 5m /bin/true
	@echo "vm-check: guest exit status carried out (false=1, true=0)"
	$(VMRUN) $(VMFLAGS) -timeout 5m /usr/bin/unshare --user --pid --mount --fork /bin/true
	@echo "vm-check: the guest's programs may create user namespaces (the guest switched root, not chrooted)"

# Debian's headless-capable browser, for the admin status page's test
# (integration/status_test.go); installed once with apt-get when missing.
chromium:
	@command -v chromium >/dev/null || { \
		$(APT_GET) install -y --no-install-recommends chromium || \
		{ $(APT_GET) update && $(APT_GET) install -y --no-install-recommends chromium; }; }

integration: build vm-prepare chromium
	$(TESTENV) $(GO) test -count=1 -timeout 17m -exec "$(VMRUN) $(VMFLAGS) -timeout 18m" ./integration/

# The daemon's concurrent parts (resident and warm cells, the pool and its
# recycling, reload under load) under the race detector, in the microVM:
# cellgate and the test binary built with -race. A race fails the test
# binary's test (go test's own check) or serve's exit status (66), which
# the tests check at its stop. Only tests whose cells' programs are not
# the test binary in a tight memory limit: the worker, a copy of the
# instrumented test binary, needs several times its memory.
RACE_TESTS := ^(TestResident|TestCellsSequentialAndConcurrent|TestConfineResident|TestConfineReusedGroups|TestConfineWarmCells|TestConfineLateUsage|TestConfineNetnsReuse|TestConfineInitSpawner|TestReloadUnderLoad|TestReloadDuringSlowUpload|TestGateConcurrentRequests|TestGateSIGTERMInFlight|TestFork)
integration-race: build examples vm-prepare python-deps
	$(GO) build -race -ldflags "$(LDFLAGS)" -o $(BIN)/race/cellgate ./cmd/cellgate
	cp $(BIN)/cellgate-init $(BIN)/race/cellgate-init
	ln -sfn ../cgi $(BIN)/race/cgi
	$(TESTENV) CELLGATE_BIN=$(BIN)/race/cellgate $(GO) test -race -count=1 -timeout 12m -exec "$(VMRUN) $(VMFLAGS) -timeout 13m" -run '$(RACE_TESTS)' ./integration/

# deploy/systemd's units under a real systemd: the microVM boots the
# guest's systemd as pid 1 (vmrun -systemd) and the test installs and drives
# the units there.
integration-systemd: build examples vm-prepare python-deps
	$(TESTENV) CELLGATE_REQUIRE_SYSTEMD=1 $(GO) test -count=1 -timeout 5m -exec "$(VMRUN) -systemd $(VMFLAGS) -timeout 6m" -run '^TestSystemd' ./integration/

test: vet python-deps unit vm-check integration integration-race integration-systemd

# The integration tests without the VM, on a host with a delegated cgroup v2
# (memory, cpu and pids enabled in this process's group), as root.
test-native: build chromium
	$(TESTENV) $(GO) test -count=1 -timeout 30m ./integration/

bench: build vm-prepare
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(TESTENV) $(GO) test -run '^$$' -bench . -benchmem -timeout 30m -exec "$(VMRUN) $(VMFLAGS) -timeout 35m" ./integration/

# ---- The example CGI programs and `make run` ----

CGI_EXAMPLES := hello echo memhog spin slow daemon malformed
RUN_POLICY   ?= examples/policy.yaml

.PHONY: examples run image

# The example CGI programs (examples/cgi), static, into bin/cgi/.
examples:
	@mkdir -p $(BIN)/cgi
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags=-s -o $(BIN)/cgi/ $(addprefix ./examples/cgi/,$(CGI_EXAMPLES))

# The integration tests and the benchmark run the example programs, and
# the fork driver's examples need Debian's Python with Flask (and the
# benchmark's baseline, gunicorn); the integration tests also run the image
# as a container would, and with crun (an OCI runtime, installed from Debian
# when missing).
integration test-native bench: examples python-deps
integration test-native: image oci-runtime host-tools
integration-systemd: host-tools
bench: cgi-servers

.PHONY: python-deps oci-runtime cgi-servers host-tools
# What the integration tests run from the host's root besides their own
# programs: Debian's perl with its core modules (a confined script
# runtime) and systemd (integration-systemd boots the host's
# /lib/systemd/systemd in the guest).
host-tools:
	@dpkg -s perl systemd >/dev/null 2>&1 || \
		{ $(APT_GET) update && $(APT_GET) install -y --no-install-recommends perl systemd; }

python-deps:
	@dpkg -s python3 python3-flask gunicorn >/dev/null 2>&1 || \
		{ $(APT_GET) update && $(APT_GET) install -y --no-install-recommends python3 python3-flask gunicorn; }

# The unsandboxed CGI servers BenchmarkCGIServers compares cellgate with:
# Debian's nginx and fcgiwrap. The benchmark runs its own instances (loopback
# only, a configuration it writes); on a host where installing a package
# starts its service, Debian's nginx also starts with its default site.
cgi-servers:
	@dpkg -s nginx fcgiwrap >/dev/null 2>&1 || \
		{ $(APT_GET) update && $(APT_GET) install -y --no-install-recommends nginx fcgiwrap; }

oci-runtime:
	@command -v crun >/dev/null 2>&1 || { $(APT_GET) update && $(APT_GET) install -y --no-install-recommends crun; }

# cellgate on 127.0.0.1:8080 (admin 127.0.0.1:9090) with the example
# policy: natively where cellgate doctor passes (delegated cgroup v2 with
# memory, cpu and pids), otherwise in the microVM with both ports forwarded
# to the host's loopback. Ctrl-C drains and stops it, SIGHUP reloads the
# policy (vmrun passes both to cellgate in the guest).
run: build examples vmrun python-deps
	@if $(BIN)/cellgate doctor >/dev/null 2>&1; then \
		echo "make run: natively (cgroup v2 with memory, cpu, pids delegated here); try: curl http://127.0.0.1:8080/hello"; \
		exec $(BIN)/cellgate serve --policy $(RUN_POLICY); \
	else \
		echo "make run: in the microVM (no delegated cgroup v2 here: see bin/cellgate doctor), ports 8080 and 9090 forwarded; try: curl http://127.0.0.1:8080/hello"; \
		$(VMRUN) -prepare && exec $(VMRUN) -timeout 12h -forward 127.0.0.1:8080:8080 -forward 127.0.0.1:9090:9090 \
			$(BIN)/cellgate serve --policy $(abspath $(RUN_POLICY)) --listen 0.0.0.0:8080 --admin 0.0.0.0:9090 --cgroup-base /sys/fs/cgroup/cellgate; \
	fi

# The OCI image, built without a container daemon (deploy/image): an OCI
# layout in bin/image and a docker-archive bin/cellgate-image.tar, holding a
# static cellgate, the example programs and the example policy.
image: cc
	$(GO) run ./deploy/image -out $(BIN)/image -archive $(BIN)/cellgate-image.tar
