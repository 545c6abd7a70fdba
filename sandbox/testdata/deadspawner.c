/* A cell init spawner that dies with its first request, for sandbox's
 * TestKernelSpawnerDiesHavingCloned: it says hello as cellgate-init's
 * spawner does, takes one request, clones a process into the request's
 * cell (as a spawner may before it answers), and exits without
 * answering. Started as anything but a spawner it is the real init
 * (INIT, set at compile time). */
#define _GNU_SOURCE
#include <linux/sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "spawner") != 0) {
		execv(INIT, argv);
		_exit(127);
	}
	unsigned char hello[8] = {0};
	uint32_t pid = (uint32_t)getpid();
	memcpy(hello, &pid, 4);
	if (write(3, hello, sizeof hello) != sizeof hello)
		_exit(2);
	unsigned char req[16];
	char cbuf[CMSG_SPACE(8 * sizeof(int))];
	struct iovec iov = {req, sizeof req};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
	if (recvmsg(3, &m, 0) != sizeof req)
		_exit(3);
	int fds[8], n = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_type == SCM_RIGHTS) {
			n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			memcpy(fds, CMSG_DATA(c), (size_t)n * sizeof(int));
		}
	uint32_t opts;
	memcpy(&opts, req + 4, 4);
	if ((opts & SPAWN_CGROUP) && n >= 2) {
		struct clone_args a;
		memset(&a, 0, sizeof a);
		a.flags = CLONE_INTO_CGROUP | CLONE_PARENT;
		a.cgroup = (uint64_t)fds[1];
		if (syscall(SYS_clone3, &a, sizeof a) == 0) {
			pause();
			_exit(0);
		}
	}
	_exit(1);
}
