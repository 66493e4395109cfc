/*
 * The attacker inside the container: each subcommand tries one thing a container
 * must not be able to do to the host, and prints what the kernel answered, as
 * "NAME=ok" or "NAME=EPERM" (the errno's name). The tests decide what must hold.
 * Built static by tests/test_probes.py and copied into a probe image; runs as the
 * container's PID 1, as an exec'd process, as root and rootless.
 *
 *   probe syscalls             the calls Docker's seccomp profile refuses
 *   probe exe PATH             chmod (same mode: changes only ctime) and open(O_WRONLY)
 *   probe device PATH c|b MAJ MIN [MARKER]   mknod, open for writing, write a line
 *   probe chmod PATH MODE      chmod a path (e.g. /dev/null)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *errname(int e)
{
	switch (e) {
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case ENOSYS: return "ENOSYS";
	case EINVAL: return "EINVAL";
	case EFAULT: return "EFAULT";
	case ENOENT: return "ENOENT";
	case EBADF: return "EBADF";
	case EROFS: return "EROFS";
	case ETXTBSY: return "ETXTBSY";
	case ENOKEY: return "ENOKEY";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	default: {
		static char buf[32];
		snprintf(buf, sizeof buf, "E%d", e);
		return buf;
	}
	}
}

static void report(const char *name, long rc)
{
	if (rc < 0)
		printf("%s=%s\n", name, errname(errno));
	else
		printf("%s=ok\n", name);
	fflush(stdout);
}

/* Each call with arguments that succeed, or fail with something else than EPERM,
 * when no filter stops them: so EPERM means the filter (or a capability the
 * container lacks). Each runs in a child of its own, so that one that works
 * (a new user namespace grants every capability in it) changes nothing for the next. */
static long attempt(int which)
{
	switch (which) {
	case 0: return syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL);
	case 1: return syscall(SYS_add_key, "user", "mc-probe", "x", 1, KEY_SPEC_PROCESS_KEYRING);
	case 2: return syscall(SYS_request_key, "user", "mc-probe-none", NULL, 0);
	case 3: return unshare(CLONE_NEWUSER);
	case 4: return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0);
	case 5: return syscall(SYS_bpf, 0, NULL, 0);
	case 6: return syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */);
	case 7: return syscall(SYS_open_by_handle_at, -1, NULL, 0);
	case 8: return personality(0x0400000 /* READ_IMPLIES_EXEC */);
	case 9: return personality(PER_LINUX);
	case 10: return socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
	case 11: return socket(AF_INET, SOCK_DGRAM, 0);
	case 12: {
		long child = syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, NULL, NULL, NULL, NULL);
		if (child == 0)
			_exit(0);
		if (child > 0)
			waitpid((pid_t)child, NULL, 0);
		return child;
	}
	case 13: return syscall(SYS_clone3, NULL, 0);
	case 14: return syscall(SYS_getppid);
	}
	return -1;
}

static const char *const names[] = {
	"keyctl", "add_key", "request_key", "unshare_user", "perf_event_open", "bpf",
	"userfaultfd", "open_by_handle_at", "personality_bad", "personality_linux",
	"socket_vsock", "socket_inet", "clone_newns", "clone3", "getppid",
};

static int syscalls(void)
{
	for (int i = 0; i < (int)(sizeof names / sizeof *names); i++) {
		pid_t pid = fork();
		if (pid == 0) {
			report(names[i], attempt(i));
			_exit(0);
		}
		waitpid(pid, NULL, 0);
	}
	return 0;
}

static int exe(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0) {
		report("exe_stat", -1);
		return 0;
	}
	report("exe_chmod", chmod(path, st.st_mode & 07777));
	int fd = open(path, O_WRONLY);
	report("exe_open_write", fd);
	if (fd >= 0)
		close(fd);
	return 0;
}

static int device(const char *path, const char *type, const char *maj, const char *min,
		  const char *marker)
{
	mode_t kind = strcmp(type, "b") == 0 ? S_IFBLK : S_IFCHR;
	report("mknod", mknod(path, kind | 0600, makedev(atoi(maj), atoi(min))));
	int fd = open(path, O_WRONLY);
	report("open", fd);
	if (fd >= 0) {
		char line[256];
		int n = snprintf(line, sizeof line, "minicontainer-probe %s: written from a container\n",
				 marker);
		report("write", write(fd, line, (size_t)n));
		close(fd);
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "syscalls") == 0)
		return syscalls();
	if (argc >= 3 && strcmp(argv[1], "exe") == 0)
		return exe(argv[2]);
	if (argc >= 6 && strcmp(argv[1], "device") == 0)
		return device(argv[2], argv[3], argv[4], argv[5], argc > 6 ? argv[6] : "-");
	if (argc >= 4 && strcmp(argv[1], "chmod") == 0) {
		report("chmod", chmod(argv[2], strtol(argv[3], NULL, 8)));
		return 0;
	}
	fprintf(stderr, "usage: probe syscalls | exe PATH | device PATH c|b MAJ MIN | chmod PATH MODE\n");
	return 2;
}
