/*
 * mcbench: the workload of the docker-vs-vm lab (minicontainer/compare).
 *
 * One small static program, run unchanged as a host process, in a chroot, in a
 * container and in a VM guest, so every backend runs exactly the same code.
 * Each subcommand times itself with clock_gettime(CLOCK_MONOTONIC) (man 2
 * clock_gettime) and prints one or more lines
 *
 *     MCBENCH-RESULT <name> <rate> <unit>
 *
 * where the rate is always "bigger is faster". `ready` and `idle` print
 * MCBENCH-READY instead: the host times how long it takes to see that line.
 *
 * Build: gcc -O2 -static -o mcbench mcbench.c   (C99, libc only)
 */
#define _GNU_SOURCE /* syscall(2), SYS_getppid */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MARKER "MCBENCH-READY"
#define MIB (1024L * 1024L)
#define BLOCK (64 * 1024) /* fileio and sha256 move data in 64 KiB blocks */
#define SMALL_FILES 200

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
	fprintf(stderr, "mcbench: %s: %s\n", what, strerror(errno));
	exit(1);
}

static long number(const char *text)
{
	char *end;
	long n = strtol(text, &end, 10);
	if (*text == '\0' || *end != '\0' || n <= 0) {
		fprintf(stderr, "mcbench: not a positive number: %s\n", text);
		exit(2);
	}
	return n;
}

static void result(const char *name, double rate, const char *unit)
{
	printf("MCBENCH-RESULT %s %.3f %s\n", name, rate, unit);
}

/* ------------------------------------------------------------------ ready, idle */

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static int cmd_idle(void)
{
	/* As PID 1 of a PID namespace, signals without a handler are ignored
	 * (man 7 pid_namespaces): docker stop / runc kill would only get us with
	 * SIGKILL. So install handlers, and block the signals until sigsuspend()
	 * so that one arriving just before we sleep is not lost. */
	struct sigaction sa;
	sigset_t block, old;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_stop;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigprocmask(SIG_BLOCK, &block, &old);
	puts(MARKER);
	fflush(stdout);
	while (!stop_requested)
		sigsuspend(&old);
	return 0;
}

/* ------------------------------------------------------------------ cpu */

static int cmd_cpu(long millions)
{
	/* An xorshift generator: every step depends on the previous one, so the
	 * compiler can neither vectorise nor fold the loop away. */
	uint64_t x = 88172645463325252ULL;
	long steps = millions * 1000000L;
	double t0 = now();
	for (long i = 0; i < steps; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
	}
	double dt = now() - t0;
	printf("checksum %llu\n", (unsigned long long)x); /* uses x: keeps the loop */
	result("cpu", millions / dt, "Mops/s");
	return 0;
}

/* ------------------------------------------------------------------ sha256 */

/* /bin/busybox inside an instance; next to bench/ when run from a host path
 * (argv[0] = .../payload/bench/mcbench), where /bin/busybox may not be ours. */
static const char *find_busybox(const char *argv0, char *buf, size_t len)
{
	const char *slash = strrchr(argv0, '/');
	if (slash != NULL && (size_t)(slash - argv0) + 16 < len) {
		snprintf(buf, len, "%.*s/../bin/busybox", (int)(slash - argv0), argv0);
		if (access(buf, X_OK) == 0)
			return buf;
	}
	return "/bin/busybox";
}

static int cmd_sha256(const char *argv0, long mb)
{
	char path[4096];
	const char *busybox = find_busybox(argv0, path, sizeof path);
	static char zeros[BLOCK];
	int fds[2];
	int status;

	fflush(stdout); /* the child inherits stdout: nothing buffered twice */
	double t0 = now();
	if (pipe(fds) < 0)
		die("pipe");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (pid == 0) {
		dup2(fds[0], 0);
		close(fds[0]);
		close(fds[1]);
		execl(busybox, "sha256sum", (char *)NULL);
		fprintf(stderr, "mcbench: exec %s: %s\n", busybox, strerror(errno));
		_exit(127);
	}
	close(fds[0]);
	for (long left = mb * MIB; left > 0;) {
		ssize_t n = write(fds[1], zeros, left < BLOCK ? left : BLOCK);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("write to sha256sum");
		}
		left -= n;
	}
	close(fds[1]);
	if (waitpid(pid, &status, 0) < 0)
		die("waitpid");
	double dt = now() - t0;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
		fprintf(stderr, "mcbench: sha256sum failed (status %d)\n", status);
		return 1;
	}
	result("sha256", mb / dt, "MB/s");
	return 0;
}

/* ------------------------------------------------------------------ fileio */

static void write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("write");
		}
		buf += n;
		len -= (size_t)n;
	}
}

static int cmd_fileio(const char *dir, long mb)
{
	static char block[BLOCK];
	char path[4096];
	struct stat st;

	/* Several instances may share a directory (runc bundles share a rootfs) and
	 * all be PID 1: the time makes the name unique. */
	snprintf(path, sizeof path, "%s/mcbench-%ld-%ld.dat", dir, (long)getpid(),
		 (long)(now() * 1e6) % 1000000000L);
	memset(block, 'x', sizeof block);

	/* Streaming: write + fsync (reaches the disk, or the VM's virtual disk),
	 * then read back (usually from the page cache: that is the point, the
	 * same path a real program takes). The rate counts the MB once. */
	double t0 = now();
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
	if (fd < 0)
		die(path);
	for (long i = 0; i < mb * MIB / BLOCK; i++)
		write_all(fd, block, BLOCK);
	if (fsync(fd) < 0)
		die("fsync");
	close(fd);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		die(path);
	ssize_t n;
	while ((n = read(fd, block, BLOCK)) != 0)
		if (n < 0 && errno != EINTR)
			die("read");
	close(fd);
	double dt = now() - t0;
	unlink(path);
	result("fileio", mb / dt, "MB/s");

	/* Metadata: what package managers and builds do, file after file. */
	t0 = now();
	for (int i = 0; i < SMALL_FILES; i++) {
		snprintf(path, sizeof path, "%s/mcbench-small-%ld-%d", dir, (long)getpid(), i);
		fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
		if (fd < 0)
			die(path);
		write_all(fd, block, 512);
		if (fsync(fd) < 0)
			die("fsync");
		close(fd);
		if (stat(path, &st) < 0)
			die("stat");
		if (unlink(path) < 0)
			die("unlink");
	}
	dt = now() - t0;
	result("smallfiles", SMALL_FILES / dt, "files/s");
	return 0;
}

/* ------------------------------------------------------------------ syscall */

static int cmd_syscall(long thousands)
{
	/* syscall(2) directly: libc could cache getppid's answer, the kernel entry
	 * and exit (and seccomp filters, if any) are what we want to time. */
	long calls = thousands * 1000L, sum = 0;
	double t0 = now();
	for (long i = 0; i < calls; i++)
		sum += syscall(SYS_getppid);
	double dt = now() - t0;
	if (sum < 0)
		return 1; /* uses sum */
	result("syscall", thousands / dt, "Kcalls/s");
	return 0;
}

/* ------------------------------------------------------------------ main */

static int usage(void)
{
	fputs("usage: mcbench ready\n"
	      "       mcbench idle\n"
	      "       mcbench cpu MILLION_STEPS\n"
	      "       mcbench sha256 MIB\n"
	      "       mcbench fileio DIR MIB\n"
	      "       mcbench syscall THOUSAND_CALLS\n",
	      stderr);
	return 2;
}

int main(int argc, char **argv)
{
	/* Line-buffered even into a pipe or a file: the host waits for each line. */
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		return usage();
	const char *cmd = argv[1];
	if (strcmp(cmd, "ready") == 0 && argc == 2) {
		puts(MARKER);
		return 0;
	}
	if (strcmp(cmd, "idle") == 0 && argc == 2)
		return cmd_idle();
	if (strcmp(cmd, "cpu") == 0 && argc == 3)
		return cmd_cpu(number(argv[2]));
	if (strcmp(cmd, "sha256") == 0 && argc == 3)
		return cmd_sha256(argv[0], number(argv[2]));
	if (strcmp(cmd, "fileio") == 0 && argc == 4)
		return cmd_fileio(argv[2], number(argv[3]));
	if (strcmp(cmd, "syscall") == 0 && argc == 3)
		return cmd_syscall(number(argv[2]));
	return usage();
}
