/*
 * cellgate-init is the init of a confined cell. The sandbox starts it
 * inside the cell's cgroup and new namespaces (user, and those of the
 * route's plan); it reads the plan frame on fd 3, applies it to itself
 * (the filesystem view, host name, loopback, rlimits, transparent huge
 * pages off, no_new_privs, the seccomp filter), reports ready, then reads
 * the exec frame with the
 * program's stdin, stdout and stderr, starts the program as its child,
 * stays PID 1 of the cell's PID namespace to reap and forward signals,
 * ends what the program left, and reports how the program ended. In exec
 * mode (argv[1] "exec", a fork route's preloader) it applies the plan and
 * executes the program in its own place instead.
 *
 * Mount templates (sandbox/templates.go): in template mode (argv[1]
 * "template") it builds the plan's filesystem view in a mount namespace
 * of its own and stops there, the private tmpfs and /proc left as empty
 * mount points and /dev read-only; the sandbox keeps that namespace by fd
 * and the process exits at the end of its control socket. An init started
 * with argv[1] "from-template" gets that fd as fd 4 and, instead of
 * building the view, enters the namespace, takes a private copy of it
 * (unshare) and mounts only what is the cell's own: the tmpfs mounts and
 * /proc.
 *
 * The spawner (argv[1] "spawner", sandbox/spawner.go): one long-lived
 * process per daemon whose fd 3 is a SOCK_SEQPACKET socket. For each
 * request it receives (the clone flags, and with it the cell's control
 * socket, its cgroup, a network namespace made ahead and a mount
 * template, each when there is one) it clones a child straight into the
 * cell (clone3 CLONE_INTO_CGROUP, with CLONE_PARENT so that the daemon is
 * the child's parent and reaps it) and answers its pid. The child is a
 * cell's init as above, without an execve of its own: it puts its fds in
 * place, enters the network namespace and runs init_main.
 *
 * It is C because it starts once per request: a Go program's runtime start
 * costs several times a whole fork and exec of a small program, and was
 * most of a confined cell's CPU. It decides nothing: the plan frame is
 * built by package confine (encode.go documents both frames, the report
 * and the order of the steps), which also holds the same init in Go
 * (Init, InitExec), run when this binary is not installed. Every message
 * it reports has the form of the Go init's.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/magic.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/msg.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
/* mount_setattr(2) (Linux 5.12), by number where headers lack it. */
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#define ATTR_RDONLY 0x1ULL /* MOUNT_ATTR_* */
#define ATTR_NOSUID 0x2ULL
#define ATTR_NODEV 0x4ULL
struct cg_mount_attr {
	uint64_t attr_set, attr_clr, propagation, userns_fd;
};

#define ARG0 "cellgate-init"
#define CONTROL_FD 3
#define TEMPLATE_FD 4
#define MAX_LAUNCH (4u << 20)
#define MAX_REPORT_MSG 1024
#define EXIT_SETUP 125
#define EXIT_SPAWN 127
#define STAGING "/tmp"
#define DEV_SIZE (64 << 10)
#define CORE_LIMIT 1 /* confine.CoreLimit */
#define MEMLOCK_LIMIT (64 << 10) /* confine.MemLockLimit */
#define OOM_SCORE_ADJ "1000" /* confine.OOMScoreAdj */
/* linux/personality.h's: the flags the kernel clears for a set-uid
 * program (glibc's sys/personality.h has the flags, not the set). */
#define PER_CLEAR_ON_SETID (READ_IMPLIES_EXEC | ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT | MMAP_PAGE_ZERO)

/* linux/ioprio.h, absent from older kernel headers. */
#define IOPRIO_WHO_PROCESS 1
#define IOPRIO_CLASS_SHIFT 13
#define IOPRIO_CLASS_RT 1

enum { R_EXITED = 1, R_SETUP, R_SPAWN, R_READY, R_STARTED };
/* A report's flags (its second byte). */
enum { RF_UNCLEAN = 1 };
enum { NS_MOUNT = 1, NS_PID = 2, NS_IPC = 4, NS_UTS = 8, NS_NET = 16 };
enum { PLAN_SECCOMP = 1, PLAN_PRELOADER = 2, PLAN_HUGE_PAGES = 4, PLAN_RESIDENT = 8, PLAN_ROOT = 16, PLAN_ROOT_MAP = 32 };
enum { BIND_WRITABLE = 1, BIND_DEV = 2, BIND_MASK = 4 };

/* The mode's part of the view: 0 builds it whole; M_TEMPLATE builds a
 * template (no cell mounts, /dev read-only, nothing else of apply);
 * M_FROM_TEMPLATE copies the template on fd 4 and adds the cell mounts. */
enum { M_WHOLE, M_TEMPLATE, M_FROM_TEMPLATE };
static int view_mode = M_WHOLE;

/* own_view: the plan gives the cell a mount namespace and view of its
 * own, where a program run as the host's root keeps only ROOT_CAPS
 * (exec_child). */
static int own_view;

/* userns_fd is the user namespace a program run as root enters before
 * its execve (PLAN_ROOT_MAP: confine.Plan.RootMap), made by apply; -1
 * where it runs as the host's root. */
static int userns_fd = -1;

/* mq_root is a resident init's own IPC namespace's POSIX message queue
 * file system, mounted nowhere (fsmount): where it has one, its
 * programs share that namespace, and finish empties it after each (its
 * SysV objects too: ipc_wipe); where it has none, each program gets an
 * IPC namespace of its own, made ahead with its stub. */
static int mq_root = -1;
/* mq_empty is the size of mq_root's directory with no queue in it (the
 * kernel gives an empty one a size, and adds to it per queue). */
static off_t mq_empty;

/* The error being reported: its message and errno (0 when none). */
static char err_msg[MAX_REPORT_MSG + 1];
static int err_no;

/* errstr is strerror as Go spells it: the first letter in lower case. */
static const char *errstr(int e)
{
	static char buf[128];
	snprintf(buf, sizeof buf, "%s", strerror(e));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] += 'a' - 'A';
	return buf;
}

/* fail sets the error: the message, then ": " and errno's text when e is
 * not 0. It returns -1. */
__attribute__((format(printf, 2, 3))) static int fail(int e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err_msg, sizeof err_msg, fmt, ap);
	va_end(ap);
	if (e) {
		size_t n = strlen(err_msg);
		snprintf(err_msg + n, sizeof err_msg - n, ": %s", errstr(e));
	}
	err_no = e;
	return -1;
}

/* prefix puts "what: " before the error's message. */
static void prefix(const char *what)
{
	char tmp[sizeof err_msg];
	snprintf(tmp, sizeof tmp, "%s: %s", what, err_msg);
	memcpy(err_msg, tmp, sizeof err_msg);
}

static void put32(unsigned char *b, uint32_t v)
{
	b[0] = v, b[1] = v >> 8, b[2] = v >> 16, b[3] = v >> 24;
}

/* report writes a report on fd (16 bytes and the message); 0 on success. */
static int report_on(int fd, int kind, int flags, int32_t code, int32_t sig, int32_t errnum, const char *msg)
{
	unsigned char b[16 + MAX_REPORT_MSG];
	size_t n = msg ? strlen(msg) : 0;
	if (n > MAX_REPORT_MSG)
		n = MAX_REPORT_MSG;
	memset(b, 0, 16);
	b[0] = kind;
	b[1] = flags;
	b[2] = n, b[3] = n >> 8;
	put32(b + 4, code);
	put32(b + 8, sig);
	put32(b + 12, errnum);
	memcpy(b + 16, msg, n);
	ssize_t w;
	do
		w = send(fd, b, 16 + n, MSG_NOSIGNAL); /* EPIPE, not SIGPIPE, when the daemon is gone */
	while (w < 0 && errno == EINTR);
	return w == (ssize_t)(16 + n) ? 0 : -1;
}

/* fail_report reports the error (kind) on fd, or on stderr when nobody
 * reads fd, and returns status. */
static int fail_report(int fd, int kind, int status)
{
	if (report_on(fd, kind, 0, 0, 0, err_no, err_msg) < 0)
		dprintf(2, "%s: %s\n", ARG0, err_msg);
	return status;
}

/* ---- frames ---- */

/* A resident init's stub (stub_main) runs in the init's own memory where
 * it can (STUB_SHARES: clone3 CLONE_VM | CLONE_VFORK, the init waiting
 * until the stub has executed the program or ended), so that no copy of
 * the init is made, faulted in and torn down per request. It must then
 * not use malloc, whose state a kill in the middle of it would leave
 * broken for the init, and nothing it allocates may outlive it: its frame
 * and what is decoded from it come from the arena, which the init takes
 * back once the stub is done (stub_done). The arena is the one the init
 * mapped at its start (arena.kept, ARENA_KEPT bytes) for the frames that
 * fit, the usual ones, and a mapping of the stub's own for a larger
 * frame, which the init unmaps. */
#define ARENA_KEPT (512u << 10)
static struct {
	int on;               /* set by the stub: allocations come from the arena */
	unsigned char *base;  /* the stub's arena, once it has one */
	unsigned char *kept;  /* the init's, mapped at its start, or NULL */
	size_t len, used;
} arena;

/* arena_keep maps the init's arena (arena_make uses it); where it
 * cannot, every stub maps one of its own. Untouched, it costs address
 * space and no memory. */
static void arena_keep(void)
{
	void *m = mmap(NULL, ARENA_KEPT, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	arena.kept = m == MAP_FAILED ? NULL : m;
}

/* arena_make gives the stub an arena for a frame of size bytes: the
 * body, its strings again with their NULs, and the lists' pointers fit
 * in six times that. A frame too large for the init's arena gets a
 * mapping of its own, noted (arena.base) as soon as it is made; a stub
 * killed between the mmap and that store leaves an untouched mapping in
 * the init, which costs it address space and no memory. */
static int arena_make(uint32_t size)
{
	size_t need = 6 * (size_t)size + (64 << 10);
	arena.used = 0;
	if (arena.kept && need <= ARENA_KEPT) {
		arena.len = ARENA_KEPT;
		arena.base = arena.kept;
		return 0;
	}
	arena.len = need;
	void *m = mmap(NULL, arena.len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return -1;
	arena.base = m;
	return 0;
}

/* zalloc returns n zeroed bytes aligned to align (a power of two): from
 * the arena in a stub, else calloc's. */
static void *zalloc(size_t n, size_t align)
{
	if (!arena.on)
		return calloc(1, n);
	if (!arena.base)
		return NULL;
	size_t at = (arena.used + align - 1) & ~(align - 1);
	if (at > arena.len || n > arena.len - at)
		return NULL;
	arena.used = at + n;
	return memset(arena.base + at, 0, n);
}

/* zfree frees what zalloc allocated outside a stub. */
static void zfree(void *p)
{
	if (!arena.on)
		free(p);
}

static int read_full(int fd, unsigned char *b, size_t n)
{
	while (n > 0) {
		ssize_t r = read(fd, b, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return fail(errno, "read");
		if (r == 0)
			return fail(0, "unexpected EOF");
		b += r, n -= r;
	}
	return 0;
}

/* take_fds keeps the first max descriptors a message came with in fds and
 * closes the others; it returns how many came. */
static int take_fds(struct msghdr *msg, int *fds, int max)
{
	int got = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int *in = (int *)CMSG_DATA(c);
		for (int i = 0; i < k; i++) {
			if (got < max)
				fds[got] = in[i];
			else
				close(in[i]);
			got++;
		}
	}
	return got;
}

/* MAX_FRAME_FDS: a resident cell's exec frame comes with the program's
 * three streams and the request's group. */
#define MAX_FRAME_FDS 4

/* read_frames reads one length-prefixed frame from fd with min to nfds
 * descriptors (received close-on-exec), how many in *got. It returns the
 * body (zalloc'd) and its length in *len, or NULL: *len is then 0 at the
 * end of the stream, 1 on an error. */
static unsigned char *read_frames(int fd, int min, int nfds, int *fds, int *got_fds, uint32_t *len)
{
	unsigned char hdr[4];
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int) * MAX_FRAME_FDS)];
	} oob;
	struct iovec iov = {.iov_base = hdr, .iov_len = sizeof hdr};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
	if (nfds > MAX_FRAME_FDS) {
		fail(0, "%d descriptors asked for with a frame, at most %d", nfds, MAX_FRAME_FDS);
		return NULL;
	}
	if (nfds > 0) {
		msg.msg_control = oob.buf;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
	}
	*len = 1;
	ssize_t n;
	do
		n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		fail(errno, "recvmsg");
		return NULL;
	}
	if (n == 0) {
		*len = 0;
		return NULL;
	}
	int got = take_fds(&msg, fds, nfds);
	if (got < min || got > nfds || (msg.msg_flags & MSG_CTRUNC)) {
		for (int i = 0; i < got && i < nfds; i++)
			close(fds[i]);
		if ((msg.msg_flags & MSG_CTRUNC) && nfds == 0)
			fail(0, "descriptors with a frame that takes none");
		else if (msg.msg_flags & MSG_CTRUNC)
			fail(0, "more descriptors with the frame than the %d it takes", nfds);
		else if (min == nfds)
			fail(0, "%d descriptors with the frame, want %d", got, nfds);
		else
			fail(0, "%d descriptors with the frame, want %d to %d", got, min, nfds);
		return NULL;
	}
	*got_fds = got;
	if (read_full(fd, hdr + n, sizeof hdr - n) < 0)
		return NULL;
	uint32_t size = hdr[0] | hdr[1] << 8 | hdr[2] << 16 | (uint32_t)hdr[3] << 24;
	if (size > MAX_LAUNCH) {
		fail(0, "frame of %u bytes, over %u", size, MAX_LAUNCH);
		return NULL;
	}
	if (arena.on && arena_make(size) < 0) {
		fail(errno, "frame of %u bytes: mmap", size);
		return NULL;
	}
	unsigned char *body = zalloc(size + 1, 1);
	if (!body) {
		fail(ENOMEM, "frame of %u bytes", size);
		return NULL;
	}
	if (read_full(fd, body, size) < 0) {
		zfree(body);
		return NULL;
	}
	*len = size;
	return body;
}

/* read_frame is read_frames with exactly nfds descriptors. */
static unsigned char *read_frame(int fd, int nfds, int *fds, uint32_t *len)
{
	int got;
	return read_frames(fd, nfds, nfds, fds, &got, len);
}

/* decoder reads a frame's fields, remembering the first error. */
struct decoder {
	const unsigned char *b;
	size_t n;
	int bad;
	char why[96];
};

/* dec_fail records the first error, worded as the Go decoder's. */
static void dec_fail(struct decoder *d, const char *fmt, ...)
{
	if (!d->bad) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(d->why, sizeof d->why, fmt, ap);
		va_end(ap);
	}
	d->bad = 1;
}

static uint32_t u32(struct decoder *d)
{
	if (d->bad || d->n < 4) {
		dec_fail(d, "truncated");
		return 0;
	}
	uint32_t v = d->b[0] | d->b[1] << 8 | d->b[2] << 16 | (uint32_t)d->b[3] << 24;
	d->b += 4, d->n -= 4;
	return v;
}

static uint64_t u64(struct decoder *d)
{
	uint64_t lo = u32(d);
	return lo | (uint64_t)u32(d) << 32;
}

/* str returns a string field, NUL-terminated (zalloc'd). */
static char *str(struct decoder *d)
{
	uint32_t n = u32(d);
	if (d->bad)
		return NULL;
	if (n > d->n) {
		dec_fail(d, "field of %u bytes with %zu left", n, d->n);
		return NULL;
	}
	if (memchr(d->b, 0, n)) {
		dec_fail(d, "string with a NUL byte");
		return NULL;
	}
	char *s = zalloc((size_t)n + 1, 1);
	if (!s) {
		dec_fail(d, "out of memory");
		return NULL;
	}
	memcpy(s, d->b, n);
	s[n] = 0;
	d->b += n, d->n -= n;
	return s;
}

/* count reads a list's length, each entry at least min bytes. */
static uint32_t count(struct decoder *d, size_t min)
{
	uint32_t n = u32(d);
	if (!d->bad && (uint64_t)n * min > d->n) {
		dec_fail(d, "list of %u entries with %zu bytes left", n, d->n);
		return 0;
	}
	return n;
}

struct bind {
	char *source, *target;
	uint32_t flags;
};
struct symlink_ {
	char *link, *target;
};
struct tmpfs {
	char *target;
	uint64_t size;
	uint32_t mode;
};

struct plan {
	uint32_t ns, flags;
	uint64_t nofile;
	uint32_t root_uid, root_gid; /* PLAN_ROOT_MAP */
	char *rootfs, *hostname;
	uint32_t nbinds, nlinks, ntmpfs, nfilter;
	struct bind *binds;
	struct symlink_ *links;
	struct tmpfs *tmpfs;
	struct sock_filter *filter;
};

static int decode_plan(const unsigned char *b, uint32_t len, struct plan *p)
{
	if (len < 4 || memcmp(b, "CGL6", 4) != 0)
		return fail(0, "plan frame: bad magic (the init must be started by cellgate's sandbox, of the same version)");
	struct decoder d = {.b = b + 4, .n = len - 4};
	memset(p, 0, sizeof *p);
	p->ns = u32(&d);
	p->flags = u32(&d);
	p->nofile = u64(&d);
	p->root_uid = u32(&d);
	p->root_gid = u32(&d);
	p->rootfs = str(&d);
	p->hostname = str(&d);
	p->nbinds = count(&d, 12);
	p->binds = calloc(p->nbinds + 1, sizeof *p->binds);
	for (uint32_t i = 0; i < p->nbinds && !d.bad && p->binds; i++) {
		p->binds[i].source = str(&d);
		p->binds[i].target = str(&d);
		p->binds[i].flags = u32(&d);
	}
	p->nlinks = count(&d, 8);
	p->links = calloc(p->nlinks + 1, sizeof *p->links);
	for (uint32_t i = 0; i < p->nlinks && !d.bad && p->links; i++) {
		p->links[i].link = str(&d);
		p->links[i].target = str(&d);
	}
	p->ntmpfs = count(&d, 16);
	p->tmpfs = calloc(p->ntmpfs + 1, sizeof *p->tmpfs);
	for (uint32_t i = 0; i < p->ntmpfs && !d.bad && p->tmpfs; i++) {
		p->tmpfs[i].target = str(&d);
		p->tmpfs[i].size = u64(&d);
		p->tmpfs[i].mode = u32(&d);
	}
	p->nfilter = count(&d, 8);
	if (p->nfilter > BPF_MAXINSNS)
		dec_fail(&d, "seccomp filter over BPF_MAXINSNS");
	p->filter = calloc(p->nfilter + 1, sizeof *p->filter);
	for (uint32_t i = 0; i < p->nfilter && !d.bad && p->filter; i++) {
		uint32_t a = u32(&d);
		p->filter[i].code = a & 0xffff;
		p->filter[i].jt = a >> 16;
		p->filter[i].jf = a >> 24;
		p->filter[i].k = u32(&d);
	}
	if (!p->binds || !p->links || !p->tmpfs || !p->filter)
		dec_fail(&d, "out of memory");
	if (!d.bad && d.n != 0)
		return fail(0, "plan frame: %zu bytes after the end", d.n);
	if (d.bad)
		return fail(0, "plan frame: %s", d.why);
	if ((p->flags & PLAN_SECCOMP) && p->nfilter == 0)
		return fail(0, "plan frame: seccomp asked for without a filter");
	if ((p->flags & PLAN_RESIDENT) && (!(p->ns & NS_PID) || (p->flags & PLAN_PRELOADER)))
		return fail(0, "plan frame: a resident cell needs a PID namespace of its own and is no preloader's");
	if ((p->flags & PLAN_ROOT_MAP) && (!(p->flags & PLAN_ROOT) || !(p->ns & NS_MOUNT) || (p->flags & PLAN_PRELOADER) || p->root_uid == 0))
		return fail(0, "plan frame: a root map needs a root program in a view of its own, no preloader, and a uid other than 0");
	return 0;
}

struct exec {
	uint32_t uid, gid, ngroups;
	gid_t *groups;
	char *path, *dir;
	char **args, **env;
};

static char **strlist(struct decoder *d)
{
	uint32_t n = count(d, 4);
	char **l = zalloc(((size_t)n + 1) * sizeof *l, sizeof *l);
	if (!l) {
		dec_fail(d, "out of memory");
		return NULL;
	}
	for (uint32_t i = 0; i < n && !d->bad; i++)
		l[i] = str(d);
	return l;
}

static int decode_exec(const unsigned char *b, uint32_t len, struct exec *e)
{
	struct decoder d = {.b = b, .n = len};
	memset(e, 0, sizeof *e);
	e->uid = u32(&d);
	e->gid = u32(&d);
	e->ngroups = count(&d, 4);
	e->groups = zalloc(((size_t)e->ngroups + 1) * sizeof *e->groups, sizeof *e->groups);
	if (!e->groups)
		dec_fail(&d, "out of memory");
	for (uint32_t i = 0; i < e->ngroups && !d.bad; i++)
		e->groups[i] = u32(&d);
	e->path = str(&d);
	e->dir = str(&d);
	e->args = strlist(&d);
	e->env = strlist(&d);
	if (!d.bad && d.n != 0)
		return fail(0, "exec frame: %zu bytes after the end", d.n);
	if (d.bad)
		return fail(0, "exec frame: %s", d.why);
	return 0;
}

/* free_exec frees what decode_exec allocated (a resident init decodes
 * one frame per request). */
static void free_exec(struct exec *e)
{
	for (char **l = e->args; l && *l; l++)
		zfree(*l);
	for (char **l = e->env; l && *l; l++)
		zfree(*l);
	zfree(e->args);
	zfree(e->env);
	zfree(e->groups);
	zfree(e->path);
	zfree(e->dir);
}

/* ---- the filesystem view (confine/steps.go, confine/apply.go) ---- */

enum { S_ROOT_TMPFS = 1, S_ROOT_BIND, S_TMPFS, S_BIND, S_SYMLINK, S_PROC, S_ROOT_RO, S_HOST_PROC, S_MOUNT_POINT, S_DEV_RO, S_PROC_RO };

struct step {
	int kind;
	const char *source, *target;
	uint32_t bind_flags;
	const struct tmpfs *tmpfs;
	const char *link_target;
	int fd;
};

static const char *dev_nodes[] = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"};
static const struct symlink_ dev_links[] = {
	{"/dev/fd", "/proc/self/fd"},
	{"/dev/stdin", "/proc/self/fd/0"},
	{"/dev/stdout", "/proc/self/fd/1"},
	{"/dev/stderr", "/proc/self/fd/2"},
};
static const struct tmpfs dev_tmpfs = {"/dev", DEV_SIZE, 0755};

#define NDEV (sizeof dev_nodes / sizeof *dev_nodes)
#define NDEVLINKS (sizeof dev_links / sizeof *dev_links)

/* steps lays out the view's steps in the order of confine's steps(). */
static struct step *steps(const struct plan *p, size_t *n)
{
	size_t max = 5 + NDEV + NDEVLINKS + p->ntmpfs + p->nbinds + p->nlinks;
	struct step *s = calloc(max, sizeof *s);
	size_t k = 0;
	if (!s)
		return NULL;
	if (p->rootfs[0])
		s[k++] = (struct step){.kind = S_ROOT_BIND, .source = p->rootfs, .target = "/"};
	else
		s[k++] = (struct step){.kind = S_ROOT_TMPFS, .target = "/"};
	s[k++] = (struct step){.kind = S_TMPFS, .target = "/dev", .tmpfs = &dev_tmpfs};
	for (size_t i = 0; i < NDEV; i++)
		s[k++] = (struct step){.kind = S_BIND, .source = dev_nodes[i], .target = dev_nodes[i],
				       .bind_flags = BIND_WRITABLE | BIND_DEV};
	for (size_t i = 0; i < NDEVLINKS; i++)
		s[k++] = (struct step){.kind = S_SYMLINK, .target = dev_links[i].link, .link_target = dev_links[i].target};
	/* A template leaves the cell's own mounts (its tmpfs, its /proc) to
	 * each cell: their mount points only. */
	int tmpl = view_mode == M_TEMPLATE;
	for (uint32_t i = 0; i < p->ntmpfs; i++)
		s[k++] = (struct step){.kind = tmpl ? S_MOUNT_POINT : S_TMPFS, .target = p->tmpfs[i].target, .tmpfs = &p->tmpfs[i]};
	for (uint32_t i = 0; i < p->nbinds; i++)
		s[k++] = (struct step){.kind = S_BIND, .source = p->binds[i].source, .target = p->binds[i].target,
				       .bind_flags = p->binds[i].flags};
	for (uint32_t i = 0; i < p->nlinks; i++)
		s[k++] = (struct step){.kind = S_SYMLINK, .target = p->links[i].link, .link_target = p->links[i].target};
	if (p->flags & PLAN_PRELOADER)
		s[k++] = (struct step){.kind = S_HOST_PROC, .source = "/proc", .target = "/proc"};
	else
		s[k++] = (struct step){.kind = tmpl ? S_MOUNT_POINT : S_PROC, .target = "/proc"};
	if (!tmpl && (p->flags & PLAN_ROOT) && !(p->flags & PLAN_PRELOADER))
		s[k++] = (struct step){.kind = S_PROC_RO, .target = "/proc"};
	/* The template's /dev is every cell's: nobody writes to it. */
	if (tmpl)
		s[k++] = (struct step){.kind = S_DEV_RO, .target = "/dev"};
	s[k++] = (struct step){.kind = S_ROOT_RO, .target = "/"};
	*n = k;
	return s;
}

/* staged is target below the staging directory; a path too long for at
 * is an error, never cut short (it would name another place). */
static int staged(char *at, size_t n, const char *target)
{
	if (snprintf(at, n, "%s%s", STAGING, strcmp(target, "/") == 0 ? "" : target) >= (int)n)
		return fail(ENAMETOOLONG, "mount point %.80s... (%zu bytes)", target, strlen(target));
	return 0;
}

/* mkdir_all makes dir and its parents (mode 0755). */
static int mkdir_all(const char *dir)
{
	char p[PATH_MAX];
	if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
		return fail(ENAMETOOLONG, "mkdir %s", dir);
	for (char *c = p + 1;; c++) {
		if (*c == '/' || *c == 0) {
			char was = *c;
			*c = 0;
			if (mkdir(p, 0755) < 0 && errno != EEXIST)
				return fail(errno, "mkdir %s", p);
			*c = was;
			if (!was)
				break;
		}
	}
	return 0;
}

static int mkdir_parent(const char *at)
{
	char parent[PATH_MAX];
	if (snprintf(parent, sizeof parent, "%s", at) >= (int)sizeof parent)
		return fail(ENAMETOOLONG, "mkdir %.80s... (%zu bytes)", at, strlen(at));
	char *slash = strrchr(parent, '/');
	if (!slash || slash == parent)
		return 0;
	*slash = 0;
	return mkdir_all(parent);
}

/* mountpoint makes sure at exists as a directory (dir) or a file to
 * mount on; under a rootfs nothing is created. */
static int mountpoint(const char *at, int dir, int rootfs)
{
	struct stat st;
	const char *cell = at + strlen(STAGING);
	if (lstat(at, &st) == 0)
		return 0;
	if (rootfs) {
		int e = errno;
		fail(0, "mount point %s: lstat %s: %s (create it in the rootfs)", cell, at, errstr(e));
		err_no = e; /* reported, as the Go init's is, with the fix last */
		return -1;
	}
	if (mkdir_parent(at) < 0) {
		prefix("mount point");
		return -1;
	}
	if (dir) {
		if (mkdir(at, 0755) < 0 && errno != EEXIST)
			return fail(errno, "mount point %s", cell);
		return 0;
	}
	int fd = open(at, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	if (fd < 0)
		return fail(errno, "mount point %s", cell);
	close(fd);
	return 0;
}

/* remount_bind applies a bind's flags: read-only unless writable, nosuid,
 * nodev unless it carries device nodes, and what the source's mount had. */
static int remount_bind(const char *at, uint32_t bflags)
{
	struct statfs sfs;
	if (statfs(at, &sfs) < 0)
		return fail(errno, "statfs");
	unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID;
	static const struct {
		unsigned long st, ms;
	} carry[] = {
		{ST_NOEXEC, MS_NOEXEC}, {ST_NOATIME, MS_NOATIME}, {ST_NODIRATIME, MS_NODIRATIME},
		{ST_RELATIME, MS_RELATIME}, {ST_RDONLY, MS_RDONLY}, {ST_NODEV, MS_NODEV},
	};
	for (size_t i = 0; i < sizeof carry / sizeof *carry; i++)
		if (sfs.f_flags & carry[i].st)
			flags |= carry[i].ms;
	if (!(bflags & BIND_WRITABLE))
		flags |= MS_RDONLY;
	if (!(bflags & BIND_DEV))
		flags |= MS_NODEV;
	if (mount("", at, NULL, flags, NULL) < 0)
		return fail(errno, "remount (flags %#lx)", flags);
	return 0;
}

/* A bind is recursive: the host's mounts below its source come with it,
 * each with its own flags, which a remount of the bind does not change.
 * So the attributes that make a bind safe (read-only unless writable,
 * nosuid, nodev unless BIND_DEV) are set on every mount of the tree with
 * mount_setattr(AT_RECURSIVE); where it is refused (ENOSYS, EPERM) the
 * bind is made again without MS_REC, and every later one so (binds_flat),
 * so that no mount of the host's below it is in the view. confine's
 * bindTree is the same. */
static int binds_flat;

/* bind_tree binds src on at with its tree, every mount of which gets set
 * (ATTR_*), its root's included: a bind copies the flags of the host's
 * mount, and set adds to them, so no remount follows (a rootfs's root is
 * read-only from the start, as S_ROOT_RO leaves it: nothing is made in
 * it). Returns 0, or 1 where the bind was made without its tree (then
 * the caller gives its root the flags with remount_bind), or -1 with
 * errno on a failure. */
static int bind_tree(const char *src, const char *at, uint64_t set)
{
	if (binds_flat)
		return mount(src, at, NULL, MS_BIND, NULL) < 0 ? -1 : 1;
	if (mount(src, at, NULL, MS_BIND | MS_REC, NULL) < 0)
		return -1;
	struct cg_mount_attr attr = {.attr_set = set};
	if (syscall(SYS_mount_setattr, AT_FDCWD, at, AT_RECURSIVE, &attr, sizeof attr) == 0)
		return 0;
	if (errno != ENOSYS && errno != EPERM)
		return -1;
	binds_flat = 1;
	if (umount2(at, MNT_DETACH) < 0 || mount(src, at, NULL, MS_BIND, NULL) < 0)
		return -1;
	return 1;
}

/* mount_tmpfs mounts a private tmpfs of the cell at at (target in the
 * cell's view, for the message). */
static int mount_tmpfs(const char *at, const char *target, const struct tmpfs *t)
{
	char data[96];
	if (t->size > 0)
		snprintf(data, sizeof data, "mode=%o,size=%llu", t->mode, (unsigned long long)t->size);
	else
		snprintf(data, sizeof data, "mode=%o", t->mode);
	if (mount("tmpfs", at, "tmpfs", MS_NOSUID | MS_NODEV, data) < 0)
		return fail(errno, "mount tmpfs on %s (%s)", target, data);
	return 0;
}

/* mount_proc mounts the cell's own /proc at at. */
static int mount_proc(const char *at)
{
	if (mount("proc", at, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		return fail(errno, "mount proc on /proc");
	return 0;
}

/* proc_ro are the parts of a cell's /proc through which root changes the
 * host's kernel without any capability: the sysctls (kernel.core_pattern,
 * kernel.modprobe), the magic SysRq key, IRQ affinities, PCI buses, file
 * systems' settings, ACPI wakeup devices, sound cards, the latency
 * tracer, SCSI drivers, the dynamic debug control. A route whose program
 * runs as root (PLAN_ROOT) gets them read-only (confine.ProcReadOnly,
 * the same list). */
static const char *const proc_ro[] = {"sys", "sysrq-trigger", "irq", "bus", "fs", "acpi", "asound", "latency_stats", "scsi", "dynamic_debug"};

/* proc_read_only binds each of proc_ro onto itself, read-only, in the
 * /proc mounted at at. */
static int proc_read_only(const char *at)
{
	char path[PATH_MAX];
	struct stat st;
	for (size_t i = 0; i < sizeof proc_ro / sizeof *proc_ro; i++) {
		snprintf(path, sizeof path, "%s/%s", at, proc_ro[i]);
		if (lstat(path, &st) < 0 && errno == ENOENT)
			continue; /* not in this kernel */
		if (mount(path, path, NULL, MS_BIND, NULL) < 0 ||
		    mount("", path, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
			return fail(errno, "make /proc/%s read-only for a program run as root", proc_ro[i]);
	}
	return 0;
}

/* in_cell_tmpfs reports whether target lies below one of the tmpfs the
 * init mounts in every view (/dev, /tmp, /var/tmp: /dev/shm is below
 * /dev), where it makes mount points and symlinks even in a rootfs,
 * whose own tree it never changes (confine's inCellTmpfs). */
static int in_cell_tmpfs(const char *target)
{
	static const char *const dirs[] = {"/dev/", "/tmp/", "/var/tmp/"};
	for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++)
		if (strncmp(target, dirs[i], strlen(dirs[i])) == 0)
			return 1;
	return 0;
}

static int run_step(const struct step *s, int rootfs)
{
	char at[PATH_MAX], fdpath[64];
	if (staged(at, sizeof at, s->target) < 0)
		return -1;
	snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", s->fd);
	struct stat st;
	switch (s->kind) {
	case S_ROOT_TMPFS:
		if (mount("cellroot", STAGING, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=4096") < 0)
			return fail(errno, "mount the cell's root tmpfs on %s", STAGING);
		return 0;
	case S_ROOT_BIND:
		if (bind_tree(fdpath, STAGING, ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV) < 0)
			return fail(errno, "bind rootfs %s", s->source);
		return 0;
	case S_TMPFS:
		if (mountpoint(at, 1, rootfs) < 0)
			return -1;
		return mount_tmpfs(at, s->target, s->tmpfs);
	case S_BIND:
	case S_HOST_PROC:
		/* A mask covers a file of the daemon's only where it still is
		 * (confine's Bind.Mask): its mount point is never made. */
		if ((s->bind_flags & BIND_MASK) && (lstat(at, &st) < 0 || !S_ISREG(st.st_mode)))
			return 0;
		if (fstat(s->fd, &st) < 0)
			return fail(errno, "stat %s", s->source);
		if (mountpoint(at, S_ISDIR(st.st_mode), rootfs) < 0)
			return -1;
		int flat = bind_tree(fdpath, at, ATTR_NOSUID | ((s->bind_flags & BIND_WRITABLE) ? 0 : ATTR_RDONLY) | ((s->bind_flags & BIND_DEV) ? 0 : ATTR_NODEV));
		if (flat < 0)
			return fail(errno, "bind %s on %s", s->source, s->target);
		if (flat && remount_bind(at, s->bind_flags) < 0) {
			char what[PATH_MAX * 2 + 16];
			snprintf(what, sizeof what, "bind %s on %s", s->source, s->target);
			prefix(what);
			return -1;
		}
		return 0;
	case S_SYMLINK:
		if (mkdir_parent(at) < 0 && !rootfs) {
			char what[PATH_MAX + 16];
			snprintf(what, sizeof what, "symlink %s", s->target);
			prefix(what);
			return -1;
		}
		if (symlink(s->link_target, at) < 0 && !(rootfs && errno == EEXIST))
			return fail(errno, "symlink %s -> %s", s->target, s->link_target);
		return 0;
	case S_PROC:
		if (mountpoint(at, 1, rootfs) < 0)
			return -1;
		return mount_proc(at);
	case S_PROC_RO:
		return proc_read_only(at);
	case S_ROOT_RO:
		if (mount("", STAGING, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
			return fail(errno, "make the cell's root read-only");
		return 0;
	case S_MOUNT_POINT:
		return mountpoint(at, 1, rootfs);
	case S_DEV_RO:
		if (mount("", at, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
			return fail(errno, "make the template's /dev read-only");
		return 0;
	}
	return fail(0, "unknown step %d", s->kind);
}

/* build_root opens the sources on the host's view, assembles the new root
 * on the staging directory, and pivots into it. */
static int build_root(const struct plan *p)
{
	if (mount("", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return fail(errno, "make / private in the cell's mount namespace");
	size_t n;
	struct step *s = steps(p, &n);
	if (!s)
		return fail(ENOMEM, "steps");
	int rc = 0;
	for (size_t i = 0; i < n; i++) {
		s[i].fd = -1;
		if (!s[i].source)
			continue;
		s[i].fd = open(s[i].source, O_PATH | O_CLOEXEC);
		if (s[i].fd < 0) {
			rc = fail(errno, "open %s to bind it at %s", s[i].source, s[i].target);
			break;
		}
	}
	for (size_t i = 0; rc == 0 && i < n; i++)
		rc = run_step(&s[i], p->rootfs[0] != 0 && !in_cell_tmpfs(s[i].target));
	for (size_t i = 0; i < n; i++)
		if (s[i].fd >= 0)
			close(s[i].fd);
	free(s);
	if (rc < 0)
		return rc;
	if (chdir(STAGING) < 0)
		return fail(errno, "chdir %s", STAGING);
	if (syscall(SYS_pivot_root, ".", ".") < 0)
		return fail(errno, "pivot_root into the cell's root");
	if (umount2(".", MNT_DETACH) < 0)
		return fail(errno, "detach the host's root");
	if (chdir("/") < 0)
		return fail(errno, "chdir /");
	return 0;
}

/* enter_template replaces build_root in from-template mode: the view is
 * a private copy of the template's (fd 4), plus the cell's own tmpfs
 * mounts and /proc, made as build_root makes them. */
static int enter_template(const struct plan *p)
{
	if (setns(TEMPLATE_FD, CLONE_NEWNS) < 0)
		return fail(errno, "setns into the route's mount template (fd %d)", TEMPLATE_FD);
	close(TEMPLATE_FD);
	if (unshare(CLONE_NEWNS) < 0)
		return fail(errno, "unshare(CLONE_NEWNS) from the route's mount template");
	if (chdir("/") < 0)
		return fail(errno, "chdir /");
	for (uint32_t i = 0; i < p->ntmpfs; i++)
		if (mount_tmpfs(p->tmpfs[i].target, p->tmpfs[i].target, &p->tmpfs[i]) < 0)
			return -1;
	if (mount_proc("/proc") < 0)
		return -1;
	return (p->flags & PLAN_ROOT) ? proc_read_only("/proc") : 0;
}

static int loopback_up(void)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return fail(errno, "socket for lo");
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	int rc = 0;
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0)
		rc = fail(errno, "SIOCGIFFLAGS lo");
	else {
		ifr.ifr_flags |= IFF_UP;
		if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
			rc = fail(errno, "bring lo up");
	}
	close(fd);
	return rc;
}

/* write_text writes text to the existing file path, whole: a kernel
 * setting of /proc. */
static int write_text(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return fail(e, "write %s=%.*s", path, (int)strcspn(text, "\n"), text);
	}
	close(fd);
	return 0;
}

/* make_userns returns the user namespace a program run as root enters
 * (confine.Plan.RootMap): its uid 0 is uid on the host and its gid 0
 * gid, nothing else mapped. A child cloned into a new user namespace
 * waits while this process, root of the parent one, writes its maps
 * (setgroups stays allowed: the writer is privileged) and opens it by the
 * cell's /proc, whose PID namespace is this process's; it exits when the
 * pipe closes. Before the filter, which refuses the clone. */
static int make_userns(uint32_t uid, uint32_t gid)
{
	int sync[2];
	if (pipe2(sync, O_CLOEXEC) < 0)
		return fail(errno, "pipe for the program's user namespace");
	pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
	if (pid < 0) {
		int e = errno;
		close(sync[0]);
		close(sync[1]);
		return fail(e, "clone(CLONE_NEWUSER) for the program's user namespace (user.max_user_namespaces 0, or a seccomp profile refusing it? run cellgate doctor)");
	}
	if (pid == 0) {
		char c;
		close(sync[1]);
		while (read(sync[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(sync[0]);
	char map[32], path[64];
	int fd = -1;
	snprintf(map, sizeof map, "0 %u 1\n", uid);
	snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
	if (write_text(path, map) == 0) {
		snprintf(map, sizeof map, "0 %u 1\n", gid);
		snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
		if (write_text(path, map) == 0) {
			snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
			fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				fail(errno, "open %s", path);
		}
	}
	close(sync[1]);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
	return fd;
}

/* cap_user_namespaces: a preloader's user namespace may create none. */
static int cap_user_namespaces(void)
{
	int fd = open("/proc/sys/user/max_user_namespaces", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "0\n", 2) != 2) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return fail(0, "cap the preloader's user namespaces at 0: write /proc/sys/user/max_user_namespaces: %s (a read-only /proc/sys? run cellgate doctor)", errstr(e));
	}
	close(fd);
	if (prctl(PR_CAPBSET_DROP, CAP_SYS_RESOURCE, 0, 0, 0) < 0)
		return fail(errno, "prctl(PR_CAPBSET_DROP, CAP_SYS_RESOURCE)");
	return 0;
}

#ifndef FSOPEN_CLOEXEC
#define FSOPEN_CLOEXEC 1
#endif
#ifndef FSMOUNT_CLOEXEC
#define FSMOUNT_CLOEXEC 1
#endif
#ifndef FSCONFIG_CMD_CREATE
#define FSCONFIG_CMD_CREATE 6
#endif

/* mqueue_mount returns a mount, attached nowhere, of the message queue
 * file system of the init's IPC namespace, or -1 where the kernel or a
 * seccomp profile refuses one (each program then gets an IPC namespace
 * of its own, as before there was this mount). */
static int mqueue_mount(void)
{
	int fc = (int)syscall(SYS_fsopen, "mqueue", FSOPEN_CLOEXEC);
	if (fc < 0)
		return -1;
	int m = -1;
	if (syscall(SYS_fsconfig, fc, FSCONFIG_CMD_CREATE, NULL, NULL, 0) == 0)
		m = (int)syscall(SYS_fsmount, fc, FSMOUNT_CLOEXEC, 0);
	close(fc);
	struct stat st;
	if (m < 0)
		return -1;
	if (fstat(m, &st) < 0) {
		close(m);
		return -1;
	}
	mq_empty = st.st_size; /* the namespace is new: no queue yet */
	return m;
}

/* ipc_used reports whether the init's IPC namespace holds a SysV shared
 * memory segment, semaphore set or message queue, or a POSIX message
 * queue (mq_root's size grows with its entries); one call each, so that a
 * request that left nothing pays four system calls. */
static int ipc_used(void)
{
	union {
		struct shm_info shm;
		struct seminfo sem;
		struct msginfo msg;
	} info;
	struct stat st;
	return shmctl(0, SHM_INFO, (struct shmid_ds *)&info.shm) < 0 || info.shm.used_ids ||
	       semctl(0, 0, SEM_INFO, &info.sem) < 0 || info.sem.semusz ||
	       msgctl(0, MSG_INFO, (struct msqid_ds *)&info.msg) < 0 || info.msg.msgpool ||
	       fstat(mq_root, &st) < 0 || st.st_size != mq_empty;
}

/* ipc_wipe removes every SysV shared memory segment, semaphore set and
 * message queue of the init's IPC namespace and every POSIX message
 * queue of mq_root (the programs it ran are gone: finish), and returns
 * whether the namespace is empty after. The *_STAT_ANY calls find each
 * object by its index whatever its mode; the init is root in the host's
 * user namespace, so it may remove any. */
static int ipc_wipe(void)
{
	if (!ipc_used())
		return 1;
	union {
		struct shmid_ds shm;
		struct semid_ds sem;
		struct msqid_ds msg;
	} ds;
	struct shm_info shm;
	int max = shmctl(0, SHM_INFO, (struct shmid_ds *)&shm);
	for (int i = 0; i <= max; i++) {
		int id = shmctl(i, SHM_STAT_ANY, &ds.shm);
		if (id >= 0)
			shmctl(id, IPC_RMID, NULL);
	}
	struct seminfo sem;
	max = semctl(0, 0, SEM_INFO, &sem);
	for (int i = 0; i <= max; i++) {
		int id = semctl(i, 0, SEM_STAT_ANY, &ds.sem);
		if (id >= 0)
			semctl(id, 0, IPC_RMID);
	}
	struct msginfo msg;
	max = msgctl(0, MSG_INFO, (struct msqid_ds *)&msg);
	for (int i = 0; i <= max; i++) {
		int id = msgctl(i, MSG_STAT_ANY, &ds.msg);
		if (id >= 0)
			msgctl(id, IPC_RMID, NULL);
	}
	int fd = openat(mq_root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	for (struct dirent *e; (e = readdir(d));)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			unlinkat(fd, e->d_name, 0);
	closedir(d);
	return !ipc_used();
}

/* own_ipc reports whether each program of plan p gets an IPC namespace
 * of its own: a resident init's, when it has no mq_root to empty its
 * own with. */
static int own_ipc(const struct plan *p)
{
	return (p->ns & NS_IPC) && mq_root < 0;
}

/* not_realtime leaves a real-time or deadline policy for SCHED_OTHER
 * (confine's notRealtime): cpu.max bounds only SCHED_OTHER's time.
 * sched_setscheduler keeps the nice value. */
static int not_realtime(void)
{
	int policy = sched_getscheduler(0);
	if (policy < 0)
		return fail(errno, "sched_getscheduler");
	policy &= ~SCHED_RESET_ON_FORK;
	if (policy != SCHED_FIFO && policy != SCHED_RR && policy != SCHED_DEADLINE)
		return 0;
	struct sched_param none = {0};
	if (sched_setscheduler(0, SCHED_OTHER, &none) < 0)
		return fail(errno, "sched_setscheduler(SCHED_OTHER)");
	return 0;
}

/* not_realtime_io leaves the real-time I/O class for the default one
 * (confine's notRealtime): it is served before every other class, whatever
 * the groups' io.weight. */
static int not_realtime_io(void)
{
	long prio = syscall(SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0);
	if (prio < 0)
		return fail(errno, "ioprio_get");
	if ((prio >> IOPRIO_CLASS_SHIFT) != IOPRIO_CLASS_RT)
		return 0;
	if (syscall(SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, 0) < 0)
		return fail(errno, "ioprio_set(IOPRIO_CLASS_NONE)");
	return 0;
}

/* not_favoured undoes the rest of what a daemon started favoured, or
 * with its defences weakened, would hand the program (confine's
 * notFavoured): a nice value below 0 goes to 0 (a positive one stays),
 * and the personality flags the kernel clears for a set-uid program
 * (no address space randomisation, readable memory executable, the
 * legacy layout, page zero mapped) are cleared. */
static int not_favoured(void)
{
	errno = 0;
	int nice = getpriority(PRIO_PROCESS, 0);
	if (nice == -1 && errno != 0)
		return fail(errno, "getpriority");
	if (nice < 0 && setpriority(PRIO_PROCESS, 0, 0) < 0)
		return fail(errno, "setpriority(PRIO_PROCESS, 0)");
	int persona = personality(0xffffffff);
	if (persona < 0 && errno == EPERM)
		return 0; /* locked: see confine's notFavoured */
	if (persona < 0)
		return fail(errno, "personality");
	if ((persona & PER_CLEAR_ON_SETID) && personality((unsigned long)(persona & ~PER_CLEAR_ON_SETID)) < 0)
		return fail(errno, "personality(%#x)", persona & ~PER_CLEAR_ON_SETID);
	return 0;
}

/* oom_first makes this process, and what it starts, the kernel's first
 * choice when the host runs out of memory (confine's OOMScoreAdj). */
static int oom_first(void)
{
	return write_text("/proc/self/oom_score_adj", OOM_SCORE_ADJ);
}

/* no_kept_caps clears the securebits, the ambient capabilities and the
 * inheritable set inherited from cellgate (confine's noKeptCaps), so
 * that the program's change of uid, and its execve, leave it no
 * capability: a program run as the host's root gets its bounding set
 * (cut to ROOT_CAPS) and the inheritable set at its execve, which would
 * bring back what a unit's AmbientCapabilities= put there. */
static int no_kept_caps(void)
{
	int bits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	if (bits < 0)
		return fail(errno, "prctl(PR_GET_SECUREBITS)");
	if (bits != 0 && prctl(PR_SET_SECUREBITS, 0, 0, 0, 0) < 0)
		return fail(errno, "clear the securebits %#x cellgate runs with (a unit's SecureBits=; locked ones cannot be): prctl(PR_SET_SECUREBITS, 0)", bits);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
		return fail(errno, "prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)");
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[_LINUX_CAPABILITY_U32S_3];
	if (syscall(SYS_capget, &h, d) < 0)
		return fail(errno, "capget");
	if (d[0].inheritable || d[1].inheritable) {
		d[0].inheritable = d[1].inheritable = 0;
		if (syscall(SYS_capset, &h, d) < 0)
			return fail(errno, "clear the inheritable capabilities cellgate runs with: capset");
	}
	return 0;
}

/* apply confines this process with the plan (confine.Apply). */
static int apply(const struct plan *p)
{
	if ((p->flags & PLAN_PRELOADER) && cap_user_namespaces() < 0)
		return -1;
	if (view_mode == M_TEMPLATE)
		return build_root(p);
	/* While /proc is still the host's and writable: a preloader's view
	 * shows it read-only. */
	if (oom_first() < 0)
		return -1;
	if (view_mode == M_FROM_TEMPLATE) {
		if (enter_template(p) < 0)
			return -1;
	} else if ((p->ns & NS_MOUNT) && build_root(p) < 0)
		return -1;
	if ((p->ns & NS_UTS) && p->hostname[0] && sethostname(p->hostname, strlen(p->hostname)) < 0)
		return fail(errno, "sethostname %s", p->hostname);
	if ((p->ns & NS_NET) && loopback_up() < 0)
		return -1;
	if ((p->flags & PLAN_ROOT_MAP) && (userns_fd = make_userns(p->root_uid, p->root_gid)) < 0)
		return -1;
	/* 1, not 0: the kernel starts a core_pattern pipe's helper whatever
	 * the limit, but for 1 (confine's CoreLimit). */
	struct rlimit core = {CORE_LIMIT, CORE_LIMIT};
	if (setrlimit(RLIMIT_CORE, &core) < 0)
		return fail(errno, "setrlimit(RLIMIT_CORE, %d)", CORE_LIMIT);
	/* Locked pages stay charged to whoever read them first
	 * (confine's MemLockLimit). */
	struct rlimit memlock = {MEMLOCK_LIMIT, MEMLOCK_LIMIT};
	if (setrlimit(RLIMIT_MEMLOCK, &memlock) < 0)
		return fail(errno, "setrlimit(RLIMIT_MEMLOCK, %d)", MEMLOCK_LIMIT);
	if (p->nofile > 0) {
		struct rlimit nf = {p->nofile, p->nofile};
		if (setrlimit(RLIMIT_NOFILE, &nf) < 0)
			return fail(errno, "setrlimit(RLIMIT_NOFILE, %llu)", (unsigned long long)p->nofile);
	}
	/* No real-time policy for a program, now or later, nor a nice value
	 * below the one it starts with. */
	struct rlimit none = {0, 0};
	if (setrlimit(RLIMIT_RTPRIO, &none) < 0)
		return fail(errno, "setrlimit(RLIMIT_RTPRIO, 0)");
	if (setrlimit(RLIMIT_NICE, &none) < 0)
		return fail(errno, "setrlimit(RLIMIT_NICE, 0)");
	if (not_realtime() < 0 || not_realtime_io() < 0 || not_favoured() < 0)
		return -1;
	/* The program keeps the flag across its execve (confine's
	 * Plan.HugePages). Best effort, as in the Go init: where it is refused
	 * the system's setting stays, which costs speed, not safety. */
	if (!(p->flags & (PLAN_HUGE_PAGES | PLAN_PRELOADER)))
		(void)prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
	/* Before the filter, which denies the mount family. */
	if ((p->flags & PLAN_RESIDENT) && (p->ns & NS_IPC))
		mq_root = mqueue_mount();
	if (no_kept_caps() < 0)
		return -1;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return fail(errno, "prctl(PR_SET_NO_NEW_PRIVS)");
	/* A resident init's filter (confine.ResidentFilter) allows the clone3
	 * it clones each request's program with; the program adds no_clone3. */
	if (p->flags & PLAN_SECCOMP) {
		struct sock_fprog prog = {.len = p->nfilter, .filter = p->filter};
		if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &prog) < 0)
			return fail(errno, "seccomp(SECCOMP_SET_MODE_FILTER, TSYNC)");
	}
	return 0;
}

/* apply_plan_frame reads the plan frame on the control socket and applies
 * it; what names the process confined, for the message. */
static int apply_plan_frame(struct plan *p, const char *what)
{
	if (fcntl(CONTROL_FD, F_SETFD, FD_CLOEXEC) < 0)
		return fail(errno, "fcntl(%d, F_SETFD, FD_CLOEXEC)", CONTROL_FD);
	uint32_t len;
	unsigned char *body = read_frame(CONTROL_FD, 0, NULL, &len);
	if (!body) {
		if (len == 0)
			fail(0, "unexpected EOF");
		char w[64];
		snprintf(w, sizeof w, "read the plan frame on fd %d", CONTROL_FD);
		prefix(w);
		return -1;
	}
	if (decode_plan(body, len, p) < 0)
		return -1;
	own_view = (p->ns & NS_MOUNT) != 0;
	if (apply(p) < 0) {
		char w[64];
		snprintf(w, sizeof w, "confine %s", what);
		prefix(w);
		return -1;
	}
	return 0;
}

/* clone3's arguments up to cgroup (CLONE_ARGS_SIZE_VER2). */
struct clone_args_v2 {
	uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
	    set_tid_size, cgroup;
};

#if defined(__x86_64__)
/* STUB_SHARES: a stub is cloned into the init's own memory
 * (prepare_stub). */
#define STUB_SHARES 1

/* clone3_vm is clone3 for a child with a stack of its own (a->stack),
 * which runs fn there and never returns (it executes a program or
 * exits): a child sharing this process's memory cannot return into the
 * caller's frames, so the child's side is in assembly (glibc has no
 * clone3 wrapper that takes CLONE_INTO_CGROUP). It returns the child's
 * pid, or -errno. */
__attribute__((noinline)) static long clone3_vm(struct clone_args_v2 *a, void (*fn)(void))
{
	long ret;
	register void (*entry)(void) __asm__("r12") = fn;
	__asm__ volatile("syscall\n\t"
	                 "test %%rax, %%rax\n\t"
	                 "jnz 1f\n\t"
	                 "xor %%ebp, %%ebp\n\t"
	                 "call *%%r12\n\t"
	                 "ud2\n"
	                 "1:"
	                 : "=a"(ret)
	                 : "0"((long)SYS_clone3), "D"(a), "S"(sizeof *a), "r"(entry)
	                 : "rcx", "r11", "memory");
	return ret;
}
#else
#define STUB_SHARES 0
#endif

/* ---- supervising the program (confine.Init) ---- */

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

/* ROOT_CAPS are the capabilities a program run as root keeps in a cell
 * of its own view (confine.RootCaps): those of files and users within
 * what the view shows, signals within its PID namespace and chroot. None
 * reaches the host's kernel (CAP_SYS_ADMIN, CAP_SYS_RAWIO, CAP_SYS_PTRACE,
 * CAP_NET_ADMIN, CAP_SYS_MODULE, ...), makes device nodes (CAP_MKNOD:
 * nothing limits what a node opens), gives a file capabilities a host
 * user would run with (CAP_SETFCAP) or takes a low port of the host's
 * (CAP_NET_BIND_SERVICE, under network: host). */
#define ROOT_CAPS                                                                                 \
	(1ULL << CAP_CHOWN | 1ULL << CAP_DAC_OVERRIDE | 1ULL << CAP_FOWNER | 1ULL << CAP_FSETID | \
	 1ULL << CAP_KILL | 1ULL << CAP_SETGID | 1ULL << CAP_SETUID | 1ULL << CAP_SETPCAP |       \
	 1ULL << CAP_SYS_CHROOT)

/* root_bounding cuts this process's bounding set to ROOT_CAPS: the execve
 * of a program run as root gives it the bounding set, and no more. A
 * capability the set lacks already is left alone (dropping one needs
 * CAP_SETPCAP, which serve checks it has where it must:
 * confine.CanCutRootCaps). Raw system calls (exec_child's). */
static int root_bounding(void)
{
	for (int c = 0; c < 64; c++) {
		if (ROOT_CAPS >> c & 1)
			continue;
		long in = syscall(SYS_prctl, PR_CAPBSET_READ, c, 0, 0, 0);
		if (in < 0 && errno == EINVAL)
			return 0; /* past the kernel's last capability */
		if (in < 0 || (in == 1 && syscall(SYS_prctl, PR_CAPBSET_DROP, c, 0, 0, 0) < 0))
			return -1;
	}
	return 0;
}

/* exec_child is the program's side of a start, in the child: fds become
 * its 0-2, it gets a process group of its own and the frame's
 * credentials (root's as root of the user namespace userns, the init's
 * userns_fd or the stub's copy of it, where the plan maps it, else cut
 * to ROOT_CAPS in a view of its own), and filter (NULL: none) is loaded
 * last, just before the execve. Raw system calls only: a vfork child
 * borrows the init's memory. It returns only on a failure, with its
 * errno. */
static int exec_child(const struct exec *e, const int fds[3], const sigset_t *unblocked, const struct sock_fprog *filter, int userns)
{
	/* setns gives full capabilities in the namespace, none outside;
	 * gid 0 is the only group there. */
	int in_ns = e->uid == 0 && userns >= 0;
	gid_t gid = in_ns ? 0 : e->gid;
	if ((in_ns && syscall(SYS_setns, userns, CLONE_NEWUSER) < 0) ||
	    (e->uid == 0 && own_view && !in_ns && root_bounding() < 0) ||
	    syscall(SYS_rt_sigprocmask, SIG_SETMASK, unblocked, NULL, _NSIG / 8) < 0 ||
	    syscall(SYS_setpgid, 0, 0) < 0 ||
	    syscall(SYS_dup3, fds[0], 0, 0) < 0 || syscall(SYS_dup3, fds[1], 1, 0) < 0 ||
	    syscall(SYS_dup3, fds[2], 2, 0) < 0 ||
	    syscall(SYS_setgroups, in_ns ? 0 : e->ngroups, in_ns ? NULL : e->groups) < 0 ||
	    syscall(SYS_setresgid, gid, gid, gid) < 0 ||
	    syscall(SYS_setresuid, e->uid, e->uid, e->uid) < 0 ||
	    (e->dir[0] && syscall(SYS_chdir, e->dir) < 0) ||
	    (filter && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, filter) < 0))
		return errno;
	syscall(SYS_execve, e->path, e->args, e->env);
	return errno;
}

/* high_fds moves the program's streams above 2, where exec_child's dup3
 * onto 0-2 cannot overwrite one with another. */
static int high_fds(const struct exec *e, int fds[3])
{
	for (int i = 0; i < 3; i++)
		if (fds[i] < 3) {
			int high = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
			if (high < 0)
				return fail(errno, "fork/exec %s: dup", e->path);
			close(fds[i]);
			fds[i] = high;
		}
	return 0;
}

/* start starts the program with fds as its 0-2, in a process group of
 * its own, under the frame's credentials. It uses vfork, as Go's and
 * glibc's spawns do: the child borrows this process's memory until its
 * exec, so no page is copied or faulted in for it, and a failure before
 * the exec comes back in child_err. Returns the pid or -1. */
static pid_t start(const struct exec *e, int fds[3], const sigset_t *unblocked)
{
	if (high_fds(e, fds) < 0)
		return -1;
	static volatile int child_err;
	child_err = 0;
	pid_t pid = vfork();
	if (pid < 0)
		return fail(errno, "fork/exec %s", e->path);
	if (pid == 0) {
		child_err = exec_child(e, fds, unblocked, NULL, userns_fd);
		_exit(EXIT_SPAWN);
	}
	if (child_err) {
		int err = child_err;
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		return fail(err, "fork/exec %s", e->path);
	}
	return pid;
}

/* no_clone3 is the rule a resident cell's program loads on top of its
 * init's filter (confine.ResidentFilter, which allows clone3 for the init)
 * before its execve: clone3 fails with ENOSYS, as under confine.Filter,
 * so that libc falls back to clone, whose flags the init's filter checks.
 * confine's TestResidentFilter checks that the two give Filter's verdicts. */
static struct sock_filter no_clone3_insns[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0), /* seccomp_data.nr */
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
};
static struct sock_fprog no_clone3 = {.len = sizeof no_clone3_insns / sizeof *no_clone3_insns, .filter = no_clone3_insns};

/* start_resident is start for a resident init (PLAN_RESIDENT): the
 * program is cloned into the request's own group, cg (clone3
 * CLONE_INTO_CGROUP), in the init's IPC namespace, which finish empties
 * after it (ipc_wipe), or in one of its own where the init has no
 * mq_root (own_ipc), and loads no_clone3 on top of the filter it
 * inherits. clone3 cannot share the init's memory without a stack of its
 * own, so the child is a copy (this process is small) and CLONE_VFORK
 * holds the init until the child's exec; a failure before the exec comes
 * back on a close-on-exec pipe. Returns the pid or -1. */
static pid_t start_resident(const struct exec *e, int fds[3], const sigset_t *unblocked, int cg, const struct plan *p)
{
	if (high_fds(e, fds) < 0)
		return -1;
	int errp[2];
	if (pipe2(errp, O_CLOEXEC) < 0)
		return fail(errno, "fork/exec %s: pipe2", e->path);
	struct clone_args_v2 a = {
	    .flags = CLONE_VFORK | CLONE_INTO_CGROUP | (own_ipc(p) ? CLONE_NEWIPC : 0),
	    .exit_signal = SIGCHLD,
	    .cgroup = (uint64_t)cg};
	long pid = syscall(SYS_clone3, &a, sizeof a);
	if (pid == 0) {
		int err = exec_child(e, fds, unblocked, (p->flags & PLAN_SECCOMP) ? &no_clone3 : NULL, userns_fd);
		while (write(errp[1], &err, sizeof err) < 0 && errno == EINTR)
			;
		_exit(EXIT_SPAWN);
	}
	int clone_err = errno;
	close(errp[1]);
	if (pid < 0) {
		close(errp[0]);
		return fail(clone_err, "fork/exec %s: clone3 into the request's group", e->path);
	}
	int child_err = 0;
	ssize_t n;
	while ((n = read(errp[0], &child_err, sizeof child_err)) < 0 && errno == EINTR)
		;
	close(errp[0]);
	if (n == sizeof child_err) {
		while (waitpid((pid_t)pid, NULL, 0) < 0 && errno == EINTR)
			;
		return fail(child_err, "fork/exec %s", e->path);
	}
	return (pid_t)pid;
}

/* A resident init's stub is the next request's process started ahead:
 * cloned into the group the daemon gives for that request (into an IPC
 * namespace of its own only where own_ipc says so) with its no_clone3
 * rule loaded on top of the init's filter, it waits on a socket the
 * daemon made and sent with that group (a prepare frame: no body, the
 * group and the socket): the daemon sends the exec frame, with the
 * program's streams, to the stub itself, and the init reaps the stub,
 * which becomes the program, as it reaps a program. The request then
 * pays a hand-off and the execve, and no wakeup of the init; the clone
 * into a group never used is paid between requests. The socket is the
 * daemon's, of its network namespace: nothing of it counts in the
 * cell's. */

/* drop_pending discards the signals of set pending for this process:
 * those forwarded while no program ran are not the next program's. */
static void drop_pending(const sigset_t *set)
{
	struct timespec now = {0, 0};
	while (sigtimedwait(set, NULL, &now) > 0)
		;
}

/* stub_main is the stub: it acknowledges the exec frame with one byte
 * (the daemon, reading the socket after the stub's end, tells from it
 * whether the request's program may have run), drops the signals
 * forwarded to it while it waited (they are not the program's), then
 * executes the program; a failure's errno follows the byte. */
static void stub_main(int ctl, const sigset_t *set, const sigset_t *unblocked, const struct plan *p)
{
	arena.on = STUB_SHARES; /* in the init's memory: no malloc (zalloc) */
	/* The user namespace a program run as root enters is kept, as fd
	 * CONTROL_FD + 1: the stub's own copy of the init's userns_fd, a
	 * variable it may share with the init and must not change. */
	int userns = userns_fd >= 0 ? CONTROL_FD + 1 : -1;
	if (dup2(ctl, CONTROL_FD) < 0 || fcntl(CONTROL_FD, F_SETFD, FD_CLOEXEC) < 0 ||
	    (userns >= 0 && userns_fd != userns && syscall(SYS_dup3, userns_fd, userns, O_CLOEXEC) < 0) ||
	    syscall(SYS_close_range, userns >= 0 ? userns + 1 : CONTROL_FD + 1, ~0U, 0) < 0)
		_exit(EXIT_SPAWN);
	ctl = CONTROL_FD; /* and nothing else of the init's: not its control socket */
	if ((p->flags & PLAN_SECCOMP) && syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &no_clone3) < 0)
		_exit(EXIT_SPAWN);
	uint32_t len;
	int fds[3];
	unsigned char *body = read_frame(ctl, 3, fds, &len);
	struct exec e;
	if (!body || decode_exec(body, len, &e) < 0)
		_exit(EXIT_SPAWN);
	zfree(body); /* in a copy of the init: charged to the request's group until the execve */
	char ack = 1;
	if (write(ctl, &ack, 1) != 1)
		_exit(EXIT_SPAWN);
	drop_pending(set);
	int err = high_fds(&e, fds) < 0 ? err_no : exec_child(&e, fds, unblocked, NULL, userns);
	while (write(ctl, &err, sizeof err) < 0 && errno == EINTR)
		;
	_exit(EXIT_SPAWN);
}

#if STUB_SHARES
/* A stub's stack, and what stub_entry passes to stub_main: the init
 * waits while a stub runs, so one of each serves stub after stub. */
static char stub_stack[128 << 10] __attribute__((aligned(64)));
static struct {
	int sock;
	const sigset_t *set, *unblocked;
	const struct plan *p;
} stub_args;

static void stub_entry(void)
{
	stub_main(stub_args.sock, stub_args.set, stub_args.unblocked, stub_args.p);
	_exit(EXIT_SPAWN);
}

/* stub_done is the init's, once its stub has executed the program or
 * ended: the stub's arena is taken back (a mapping of its own unmapped),
 * and so go the signals the init received
 * while it waited for the stub (forwarded, they would have been the
 * stub's, which drops them: they are not the program's). A SIGCHLD is
 * dropped with them: reap looks for an ended child before it waits. */
static void stub_done(const sigset_t *set)
{
	if (arena.base && arena.base != arena.kept)
		munmap(arena.base, arena.len);
	arena.on = 0, arena.base = NULL, arena.len = arena.used = 0;
	drop_pending(set);
}
#endif

/* prepare_stub starts a stub in the group cg waiting on sock, and returns
 * its pid, or -1. Where STUB_SHARES, the stub shares the init's memory and
 * the init waits (CLONE_VFORK) until the stub has executed the request's
 * program or ended, so that no copy of the init is made for it (which
 * was charged to the request's group, faulted in by the stub and torn
 * down by its execve); elsewhere it is a copy of the init. */
static pid_t prepare_stub(int cg, int sock, const sigset_t *set, const sigset_t *unblocked, const struct plan *p)
{
	struct clone_args_v2 a = {
	    .flags = CLONE_INTO_CGROUP | (own_ipc(p) ? CLONE_NEWIPC : 0),
	    .exit_signal = SIGCHLD,
	    .cgroup = (uint64_t)cg};
#if STUB_SHARES
	a.flags |= CLONE_VM | CLONE_VFORK;
	a.stack = (uint64_t)(uintptr_t)stub_stack;
	a.stack_size = sizeof stub_stack;
	stub_args.sock = sock, stub_args.set = set, stub_args.unblocked = unblocked, stub_args.p = p;
	long pid = clone3_vm(&a, stub_entry);
	if (pid >= 0)
		stub_done(set);
#else
	long pid = syscall(SYS_clone3, &a, sizeof a);
	if (pid == 0)
		stub_main(sock, set, unblocked, p);
	if (pid < 0)
		pid = -errno;
#endif
	if (pid < 0)
		return fail((int)-pid, "clone3 of the next request's process into its group");
	return (pid_t)pid;
}

/* reap waits for the program, forwarding signals to it and reaping every
 * orphan of the cell; it fills the report's code and signal. */
static void reap(pid_t pid, const sigset_t *set, int32_t *code, int32_t *sig)
{
	for (;;) {
		int st;
		pid_t got;
		while ((got = waitpid(-1, &st, WNOHANG)) > 0) {
			if (got != pid)
				continue;
			if (WIFSIGNALED(st)) {
				*code = -1, *sig = WTERMSIG(st);
			} else {
				*code = WEXITSTATUS(st), *sig = 0;
			}
			return;
		}
		if (got < 0 && errno != EINTR) {
			*code = -1, *sig = SIGKILL;
			snprintf(err_msg, sizeof err_msg, "wait4: %s", errstr(errno));
			return;
		}
		siginfo_t si;
		int s = sigwaitinfo(set, &si);
		if (s > 0 && s != SIGCHLD)
			kill(pid, s);
	}
}

/* WIPE_DEPTH bounds the directories wipe_at holds open at once (each a
 * DIR and its buffer); what lies deeper goes with the mount namespace. */
#define WIPE_DEPTH 32

/* take makes the directory name (in dfd) root's, mode 0700, so that the
 * wipe may open it and remove what it holds with CAP_CHOWN alone: the
 * daemon's bounding set (the systemd unit's, the pod's) has neither
 * CAP_DAC_OVERRIDE nor CAP_FOWNER, and the program may have closed the
 * directory to others (mkdtemp's 0700), made it read-only, or made it
 * sticky over files of its own. Only the program's directories (root's
 * are the view's own, leading to a mount below, and keep their mode).
 * Through an O_PATH descriptor opened with O_NOFOLLOW: a directory
 * swapped for a symlink meanwhile is not opened, and nothing a link names
 * is changed. */
static void take(int dfd, const char *name)
{
	int fd = openat(dfd, name, O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return;
	char p[32];
	snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
	if (fchownat(fd, "", 0, 0, AT_EMPTY_PATH) == 0)
		chmod(p, 0700);
	close(fd);
}

/* wipe_at removes what the directory dfd holds, depth first, and closes
 * dfd. It names entries only relative to directory fds it opened itself
 * with O_NOFOLLOW, never by path: a process outside the cell that holds a
 * directory fd of this tmpfs (passed to it over a socket) may swap a
 * directory for a symlink while the walk runs, and a path walked again
 * from the mount point would then lead this root process into whatever
 * the link names. A swapped entry is removed as what it now is, or
 * skipped; an entry of another device (a mount below) is kept. */
static void wipe_at(int dfd, dev_t dev, int depth)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		const char *n = e->d_name;
		if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)))
			continue;
		struct stat st;
		if (fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != dev)
			continue;
		if (!S_ISDIR(st.st_mode)) {
			unlinkat(dirfd(d), n, 0);
			continue;
		}
		if (depth > 0) {
			if (st.st_uid != 0)
				take(dirfd(d), n);
			int sub = openat(dirfd(d), n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0) {
				if (fstat(sub, &st) == 0 && st.st_dev == dev)
					wipe_at(sub, dev, depth - 1);
				else
					close(sub);
			}
		}
		unlinkat(dirfd(d), n, AT_REMOVEDIR);
	}
	closedir(d);
}

/* wipe empties the tmpfs mounted at target (wipe_at). */
static void wipe(const char *target)
{
	int fd = open(target, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0)
		return;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return;
	}
	wipe_at(fd, st.st_dev, WIPE_DEPTH);
}

/* SKEL_MAX bounds the entries at a private tmpfs' top that the view put
 * there itself, noted by a resident init before any program runs: the
 * directories leading to a mount below the tmpfs (a route's program or
 * bind under /tmp, say), root's, which no program can remove or write in.
 * Each is then not the program's, and the wipe leaves it (it holds a
 * mount point). */
#define SKEL_MAX 8

/* skel is the view's own part of a private tmpfs: the inodes it held
 * before any program ran, and its top-level entries' inode numbers (n -1:
 * more than SKEL_MAX, none of them is known). */
struct skel {
	uint64_t used;
	int n;
	ino_t ino[SKEL_MAX];
};

/* skels, one per tmpfs of the plan, are noted by a resident init
 * (note_skeletons); NULL otherwise: a tmpfs' own part is then its root. */
static struct skel *skels;

/* each_top calls each with every entry at the top of the directory at
 * target (. and .. passed over): target's own stat, the entry's (lstat;
 * NULL if it cannot be had) and arg, until each returns 0. -1: target
 * could not be read. */
static int each_top(const char *target, int (*each)(const struct stat *root, const struct stat *st, void *arg), void *arg)
{
	int fd = open(target, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct stat root;
	DIR *d = fd >= 0 && fstat(fd, &root) == 0 ? fdopendir(fd) : NULL;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	struct dirent *e;
	int more = 1;
	while (more && (e = readdir(d))) {
		const char *n = e->d_name;
		struct stat st;
		if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)))
			continue;
		more = each(&root, fstatat(dirfd(d), n, &st, AT_SYMLINK_NOFOLLOW) == 0 ? &st : NULL, arg);
	}
	closedir(d);
	return 0;
}

/* note_top notes an entry at a tmpfs' top as the view's own, if it is
 * the tmpfs' (not a mount below); an entry that cannot be stat'ed, or
 * one more than SKEL_MAX, leaves nothing known (n -1). */
static int note_top(const struct stat *root, const struct stat *st, void *arg)
{
	struct skel *k = arg;
	if (!st || (st->st_dev == root->st_dev && k->n >= SKEL_MAX))
		k->n = -1;
	else if (st->st_dev == root->st_dev)
		k->ino[k->n++] = st->st_ino;
	return k->n >= 0;
}

/* note_skeletons notes the view's own part of each private tmpfs. Where
 * it cannot, nothing is known of it: what lies there makes the cell
 * unclean after its first request, and it serves no other. */
static void note_skeletons(const struct plan *p)
{
	skels = calloc(p->ntmpfs + 1, sizeof *skels);
	for (uint32_t i = 0; skels && i < p->ntmpfs; i++) {
		struct skel *k = &skels[i];
		struct statfs s;
		if (statfs(p->tmpfs[i].target, &s) < 0 || each_top(p->tmpfs[i].target, note_top, k) < 0) {
			k->n = -1;
			continue;
		}
		k->used = s.f_files - s.f_ffree;
	}
}

/* own reports whether the entry st at the top of tmpfs i is the view's
 * own (note_skeletons). */
static int own(uint32_t i, const struct stat *st)
{
	if (!skels || !S_ISDIR(st->st_mode))
		return 0;
	for (int j = 0; j < skels[i].n; j++)
		if (skels[i].ino[j] == st->st_ino)
			return 1;
	return 0;
}

/* tmpfs_empty reports whether the tmpfs at target (the plan's tmpfs i)
 * holds nothing but its root and the view's own part, from one statfs
 * instead of a walk (confine's tmpfsEmpty says how tmpfs counts; every
 * error is towards a walk). A tmpfs without an inode limit (f_files 0),
 * or anything else, is walked. */
static int tmpfs_empty(const char *target, uint32_t i)
{
	struct statfs s;
	uint64_t own_inodes = skels && skels[i].n >= 0 ? skels[i].used : 1;
	return statfs(target, &s) == 0 && s.f_type == TMPFS_MAGIC && s.f_files > 0 && s.f_files - s.f_ffree == own_inodes;
}

/* clean_arg is tmpfs_clean's: the tmpfs' index in the plan, and whether
 * its top is clean so far. */
struct clean_arg {
	uint32_t i;
	int clean;
};

/* clean_top is tmpfs_clean's look at one entry: clean while it is the
 * view's own or on another device (a mount below). */
static int clean_top(const struct stat *root, const struct stat *st, void *arg)
{
	struct clean_arg *c = arg;
	if (!st || (st->st_dev == root->st_dev && !own(c->i, st)))
		c->clean = 0;
	return c->clean;
}

/* tmpfs_clean reports whether the tmpfs at target (the plan's tmpfs i)
 * holds nothing at its top but the view's own part (note_skeletons; what
 * lies on another device, a mount below, is not the program's either):
 * after a wipe, anything it could not remove (deeper than WIPE_DEPTH)
 * keeps its top-level directory too. */
static int tmpfs_clean(const char *target, uint32_t i)
{
	struct clean_arg c = {i, 1};
	return each_top(target, clean_top, &c) == 0 && c.clean;
}

/* finish ends what the program left (confine's finish): every other
 * process of the PID namespace, and the files of the private tmpfs. It
 * returns whether everything is gone: a resident cell that is not clean
 * (a tree deeper than the wipe goes) serves no further request. */
static int finish(const struct plan *p)
{
	if ((p->ns & NS_PID) && getpid() == 1) {
		kill(-1, SIGKILL);
		for (;;) {
			if (waitpid(-1, NULL, 0) < 0 && errno != EINTR)
				break;
		}
	}
	int clean = 1;
	if ((p->flags & PLAN_RESIDENT) && mq_root >= 0 && !ipc_wipe())
		clean = 0;
	if (p->ns & NS_MOUNT)
		for (uint32_t i = 0; i < p->ntmpfs; i++)
			if (!tmpfs_empty(p->tmpfs[i].target, i)) {
				wipe(p->tmpfs[i].target);
				if ((p->flags & PLAN_RESIDENT) && !tmpfs_clean(p->tmpfs[i].target, i))
					clean = 0;
			}
	return clean;
}

/* init_main is the cell's init (confine.Init). A resident init
 * (PLAN_RESIDENT) runs one program per request, each in a group of the
 * request's own, and after each report waits for the next frame: the
 * cell's view, namespaces and init serve request after request, finish
 * having ended what each program left. A request's group comes either
 * with its exec frame (a fourth descriptor: the program is cloned into
 * it then, and R_STARTED says so) or ahead of it in a prepare frame (no
 * body, two descriptors: a stub is started in the group, waiting on the
 * socket, to which the daemon sends the exec frame itself; the init
 * reaps the stub, which becomes the program, as it reaps a program). */
static int init_main(void)
{
	struct plan p;
	if (apply_plan_frame(&p, "the cell") < 0)
		return fail_report(CONTROL_FD, R_SETUP, EXIT_SETUP);
	sigset_t set, old;
	sigemptyset(&set);
	for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
		sigaddset(&set, forwarded[i]);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, &old);
	if (report_on(CONTROL_FD, R_READY, 0, 0, 0, 0, "") < 0)
		return EXIT_SETUP;
	int resident = !!(p.flags & PLAN_RESIDENT);
	if (resident && (p.ns & NS_MOUNT))
		note_skeletons(&p);
	if (resident && STUB_SHARES)
		arena_keep();
	for (;;) {
		uint32_t len;
		int fds[4], got;
		unsigned char *body = read_frames(CONTROL_FD, resident ? 2 : 3, resident ? 4 : 3, fds, &got, &len);
		if (!body) {
			if (len == 0)
				return 0; /* a prepared cell that was never used, or no next request */
			char w[64];
			snprintf(w, sizeof w, "read the exec frame on fd %d", CONTROL_FD);
			prefix(w);
			return fail_report(CONTROL_FD, R_SPAWN, EXIT_SPAWN);
		}
		/* prepare: two descriptors, no body; exec: four. */
		if (resident && !(got == 2 ? len == 0 : got == 4)) {
			zfree(body);
			for (int i = 0; i < got; i++)
				close(fds[i]);
			fail(0, "a frame of %u bytes with %d descriptors: want a prepare frame (none, 2) or an exec frame (4)", len, got);
			return fail_report(CONTROL_FD, R_SPAWN, EXIT_SPAWN);
		}
		pid_t pid = -1;
		if (got == 2) {
			/* Where no stub can be started, the init ends: the daemon
			 * finds it gone when it takes the cell. */
			zfree(body);
			pid = prepare_stub(fds[0], fds[1], &set, &old, &p);
			close(fds[0]);
			close(fds[1]);
			if (pid < 0)
				return fail_report(CONTROL_FD, R_SPAWN, EXIT_SPAWN);
		} else {
			struct exec e;
			int decoded = decode_exec(body, len, &e);
			if (decoded == 0 && resident) {
				drop_pending(&set);
				pid = start_resident(&e, fds, &old, fds[3], &p);
				/* From the report on, the daemon ends the program by
				 * its group alone: it is in it. */
				if (pid > 0)
					report_on(CONTROL_FD, R_STARTED, 0, 0, 0, 0, "");
			} else if (decoded == 0) {
				/* A warm cell's init waited for this request with the
				 * forwarded signals blocked: those sent meanwhile were
				 * for no program, not this one. */
				drop_pending(&set);
				pid = start(&e, fds, &old);
			}
			zfree(body);
			free_exec(&e);
			for (int i = 0; i < got; i++)
				close(fds[i]);
			if (pid < 0)
				return fail_report(CONTROL_FD, R_SPAWN, EXIT_SPAWN);
		}
		int32_t code = 0, sig = 0;
		err_msg[0] = 0;
		reap(pid, &set, &code, &sig);
		int clean = finish(&p);
		if (report_on(CONTROL_FD, R_EXITED, clean ? 0 : RF_UNCLEAN, code, sig, 0, err_msg) < 0 || !resident || !clean)
			return sig ? 128 + sig : code;
	}
}

/* exec_main is the exec mode (confine.InitExec). */
static int exec_main(void)
{
	struct plan p;
	if (apply_plan_frame(&p, "the preloader") < 0)
		return fail_report(CONTROL_FD, R_SETUP, EXIT_SETUP);
	if (report_on(CONTROL_FD, R_READY, 0, 0, 0, 0, "") < 0)
		return EXIT_SETUP;
	uint32_t len;
	int fd;
	unsigned char *body = read_frame(CONTROL_FD, 1, &fd, &len);
	if (!body) {
		if (len == 0)
			return 0;
		char w[64];
		snprintf(w, sizeof w, "read the exec frame on fd %d", CONTROL_FD);
		prefix(w);
		return fail_report(CONTROL_FD, R_SPAWN, EXIT_SPAWN);
	}
	struct exec e;
	if (decode_exec(body, len, &e) < 0)
		return fail_report(CONTROL_FD, R_SPAWN, EXIT_SPAWN);
	/* The control socket moves out of the way (close-on-exec) so that a
	 * failed exec can still be reported on it. */
	int ctl = fcntl(CONTROL_FD, F_DUPFD_CLOEXEC, CONTROL_FD + 1);
	if (ctl < 0) {
		fail(errno, "move the control socket");
		return fail_report(CONTROL_FD, R_SPAWN, EXIT_SPAWN);
	}
	if (dup3(fd, CONTROL_FD, 0) < 0) {
		fail(errno, "make the program's socket fd %d", CONTROL_FD);
		return fail_report(ctl, R_SPAWN, EXIT_SPAWN);
	}
	close(fd);
	if (e.dir[0] && chdir(e.dir) < 0) {
		fail(errno, "chdir %s", e.dir);
		return fail_report(ctl, R_SPAWN, EXIT_SPAWN);
	}
	execve(e.path, e.args, e.env);
	fail(errno, "exec %s", e.path);
	return fail_report(ctl, R_SPAWN, EXIT_SPAWN);
}

static void no_op(int sig) { (void)sig; }

/* outlive_signals has a long-lived mode (the spawner, a template) outlive
 * the signals an operator may send every process of cellgate's unit
 * (`systemctl kill` without --kill-whom=main: SIGUSR1 to reopen the logs,
 * SIGHUP to reload), whose default is to end it. They are caught, not
 * ignored: an execve resets a caught signal to its default, so the
 * programs of the inits the spawner clones get none of this. */
static void outlive_signals(void)
{
	struct sigaction sa = {.sa_handler = no_op, .sa_flags = SA_RESTART};
	sigemptyset(&sa.sa_mask);
	const int sigs[] = {SIGHUP, SIGINT, SIGUSR1, SIGUSR2, SIGPIPE};
	for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
		sigaction(sigs[i], &sa, NULL);
}

/* template_main is the template mode: the view alone, kept until the
 * control socket ends. */
static int template_main(void)
{
	struct plan p;
	outlive_signals();
	view_mode = M_TEMPLATE;
	if (apply_plan_frame(&p, "the template") < 0)
		return fail_report(CONTROL_FD, R_SETUP, EXIT_SETUP);
	if (report_on(CONTROL_FD, R_READY, 0, 0, 0, 0, "") < 0)
		return EXIT_SETUP;
	for (;;) {
		char b;
		ssize_t n = read(CONTROL_FD, &b, 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 0;
	}
}

/* ---- the spawner ---- */

/* A spawn request: "CGS1", its options (little-endian), the clone flags;
 * with it, in this order, the cell's control socket, then its cgroup, a
 * network namespace and a mount template as the options say. The answer:
 * the child's pid and an errno (0, or why nothing was cloned). */
#define SPAWN_MAGIC "CGS1"
#define SPAWN_REQUEST 16
#define SPAWN_ANSWER 8
enum { SP_FROM_TEMPLATE = 1, SP_CGROUP = 2, SP_NETNS = 4 };

static char *spawner_arg; /* argv[1], blanked in each child */

/* spawned is the child: a cell's init. fds 0-2 are the spawner's
 * (/dev/null); the control socket goes to fd 3 (over the spawner's
 * socket) and the template to fd 4, and nothing else is kept. */
static int spawned(uint32_t opts, int ctl, int ns, int tpl)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL); /* the daemon's end; before this, the control socket's */
	memset(spawner_arg, 0, strlen(spawner_arg)); /* /proc/1/cmdline: cellgate-init */
	int nserr = 0;
	if (ns >= 0 && setns(ns, CLONE_NEWNET) < 0)
		nserr = errno;
	if (dup2(ctl, CONTROL_FD) < 0)
		return EXIT_SETUP; /* no control socket to report on */
	if (tpl >= 0 && dup2(tpl, TEMPLATE_FD) < 0) {
		fail(errno, "dup2 the route's mount template to fd %d", TEMPLATE_FD);
		return fail_report(CONTROL_FD, R_SETUP, EXIT_SETUP);
	}
	if (syscall(SYS_close_range, tpl >= 0 ? TEMPLATE_FD + 1 : TEMPLATE_FD, ~0U, 0) < 0) {
		fail(errno, "close_range: the init would keep the spawner's descriptors");
		return fail_report(CONTROL_FD, R_SETUP, EXIT_SETUP);
	}
	if (nserr) {
		fail(nserr, "setns into a network namespace made ahead");
		return fail_report(CONTROL_FD, R_SETUP, EXIT_SETUP);
	}
	if (setsid() < 0) {
		fail(errno, "setsid");
		return fail_report(CONTROL_FD, R_SETUP, EXIT_SETUP);
	}
	view_mode = (opts & SP_FROM_TEMPLATE) ? M_FROM_TEMPLATE : M_WHOLE;
	return init_main();
}

/* spawn clones a cell's init as the request says; it returns its pid, or
 * -1 with errno set. */
static pid_t spawn(uint64_t flags, uint32_t opts, int ctl, int cg, int ns, int tpl)
{
	struct clone_args_v2 a = {.flags = flags | CLONE_PARENT};
	if (cg >= 0) {
		a.flags |= CLONE_INTO_CGROUP;
		a.cgroup = (uint64_t)cg;
	}
	long pid = syscall(SYS_clone3, &a, sizeof a);
	if (pid == 0)
		_exit(spawned(opts, ctl, ns, tpl));
	return (pid_t)pid;
}

/* The clone flags a request may ask for: the plan's namespaces. */
#define SPAWN_FLAGS ((uint64_t)(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET))

/* answer sends an answer (or, pid being its own and errno 0, the hello);
 * it returns -1 once the daemon's end is gone. */
static int answer(int32_t pid, int32_t e)
{
	unsigned char ans[SPAWN_ANSWER];
	put32(ans, (uint32_t)pid);
	put32(ans + 4, (uint32_t)e);
	ssize_t w;
	do
		w = send(CONTROL_FD, ans, sizeof ans, MSG_NOSIGNAL);
	while (w < 0 && errno == EINTR);
	return w == sizeof ans ? 0 : -1;
}

/* spawner_main says hello (its pid), then answers spawn requests on fd 3
 * until its end closes. */
static int spawner_main(void)
{
	outlive_signals();
	if (answer(getpid(), 0) < 0)
		return 0;
	for (;;) {
		unsigned char req[SPAWN_REQUEST + 1];
		int fds[4];
		union {
			struct cmsghdr align;
			char buf[CMSG_SPACE(sizeof fds)];
		} oob;
		struct iovec iov = {.iov_base = req, .iov_len = sizeof req};
		struct msghdr msg = {
		    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = oob.buf, .msg_controllen = sizeof oob.buf};
		ssize_t n = recvmsg(CONTROL_FD, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return 0;
		int got = take_fds(&msg, fds, 4);
		uint32_t opts = req[4] | req[5] << 8 | req[6] << 16 | (uint32_t)req[7] << 24;
		uint64_t flags = 0;
		for (int i = 0; i < 8; i++)
			flags |= (uint64_t)req[8 + i] << (8 * i);
		int want = 1 + !!(opts & SP_CGROUP) + !!(opts & SP_NETNS) + !!(opts & SP_FROM_TEMPLATE);
		int32_t pid = 0, e = 0;
		if (n != SPAWN_REQUEST || memcmp(req, SPAWN_MAGIC, 4) != 0 || (msg.msg_flags & MSG_CTRUNC) ||
		    got != want || (opts & ~(uint32_t)(SP_FROM_TEMPLATE | SP_CGROUP | SP_NETNS)))
			e = EPROTO;
		else if (flags & ~SPAWN_FLAGS)
			e = EINVAL;
		else {
			int k = 1;
			int cg = (opts & SP_CGROUP) ? fds[k++] : -1;
			int ns = (opts & SP_NETNS) ? fds[k++] : -1;
			int tpl = (opts & SP_FROM_TEMPLATE) ? fds[k++] : -1;
			pid = spawn(flags, opts, fds[0], cg, ns, tpl);
			if (pid < 0)
				pid = 0, e = errno;
		}
		for (int i = 0; i < got && i < 4; i++)
			close(fds[i]);
		if (answer(pid, e) < 0)
			return 0;
	}
}

/* close_launcher closes every fd above last, the mode's own: the daemon
 * passes the init's executable as the fd after them (it is executed
 * through /proc/self/fd/N, confine.Launcher.Attach), and the exec left it
 * inheritable; nothing of it may reach what the init runs. */
static void close_launcher(int last)
{
	if (syscall(SYS_close_range, last + 1, ~0U, 0) < 0)
		close(last + 1);
}

int main(int argc, char **argv)
{
	if (argc >= 1 && strcmp(argv[0], ARG0) == 0) {
		/* Started from an fd (/proc/self/fd/N), the init's name in
		 * ps, top and the kernel's OOM reports would be that fd's
		 * number: it names itself, for every mode, and what it clones
		 * (the spawner's inits, a resident init's stubs) keeps that
		 * name until their execve. */
		prctl(PR_SET_NAME, ARG0, 0, 0, 0);
		int from_template = argc == 2 && strcmp(argv[1], "from-template") == 0;
		close_launcher(from_template ? TEMPLATE_FD : CONTROL_FD);
		if (argc == 1)
			return init_main();
		if (argc == 2 && strcmp(argv[1], "template") == 0)
			return template_main();
		if (from_template) {
			view_mode = M_FROM_TEMPLATE;
			return init_main();
		}
		if (argc == 2 && strcmp(argv[1], "exec") == 0)
			return exec_main();
		if (argc == 2 && strcmp(argv[1], "spawner") == 0) {
			spawner_arg = argv[1];
			return spawner_main();
		}
	}
	dprintf(2, "cellgate-init is started by cellgate for each confined cell, never by hand\n");
	return 2;
}
