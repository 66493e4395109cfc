/*
 * mcinit: the first program a container runs, from a sealed copy in memory.
 *
 * Why it exists (runc's CVE-2019-5736): the runtime sets a container up in
 * Python, so until the last execve(2) the container's first process *is* the
 * host's Python interpreter, and /proc/PID/exe leads to that host file. Had the
 * runtime exec'd the user's program itself, a program starting with the line
 * "#!/proc/self/exe" would get the host's Python back as its interpreter, with
 * container root's rights over it: `chmod 4755 /proc/self/exe` makes the host's
 * Python setuid root for every host user. So the runtime exec's this small static
 * program instead, from a memfd(2) copy sealed against writes (F_SEAL_WRITE, ...;
 * memfd_create(2), fcntl(2) "File Sealing"). From then on /proc/PID/exe of every
 * container process is that sealed copy or a file of the image: nothing of the
 * host's. A chmod of the memfd changes only the memfd.
 *
 *   mcinit ERRFD exec PROG [ARG...]   become PROG (execve, PATH search)
 *   mcinit ERRFD init PROG [ARG...]   stay PID 1: run PROG as a child, pass
 *                                     signals on, reap every orphan (like tini)
 *
 * ERRFD is the runtime's error pipe. If PROG cannot be executed, "CODE message"
 * is written to it (127: not found, 126: not executable, as Docker's exit codes)
 * and mcinit exits with CODE; once PROG runs the pipe closes by itself (it is
 * close-on-exec), which tells the runtime the start succeeded.
 *
 * It is non-dumpable (prctl(2) PR_SET_DUMPABLE) while it runs, so no process of
 * the container may ptrace it or open its /proc/PID files; execve of PROG makes
 * the new program dumpable again, as for any program.
 *
 * Built once with `cc -static` (runtime/init.py); only libc, no allocation.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int errfd = -1;

/* "CODE exec: "PROG": reason" on the error pipe, then exit CODE. */
static void fail(int code, const char *prog, const char *reason)
{
	char msg[PATH_MAX + 256];
	int n = snprintf(msg, sizeof msg, "%d exec: \"%s\": %s", code, prog, reason);
	if (n > 0 && errfd >= 0) {
		ssize_t ignored = write(errfd, msg, (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1);
		(void)ignored;
	}
	_exit(code);
}

/* strerror, lower-cased: the runtime's messages read "permission denied". */
static const char *reason(int err)
{
	static char buf[128];
	snprintf(buf, sizeof buf, "%s", strerror(err));
	for (char *p = buf; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return buf;
}

/*
 * execvp(3) without its fallback to /bin/sh on ENOEXEC: a file that is not a
 * program is an error (126), as with Docker. Like Python's os.execvpe: try
 * each directory of PATH, report the first error that is not "not found".
 */
static void exec_program(char **argv)
{
	const char *prog = argv[0];
	if (strchr(prog, '/')) {
		execve(prog, argv, environ);
		fail(errno == ENOENT ? 127 : 126, prog, reason(errno));
	}
	const char *path = getenv("PATH");
	if (path == NULL)
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	int saved = 0;
	char full[PATH_MAX];
	for (const char *dir = path;; dir = strchr(dir, ':') + 1) {
		size_t len = strcspn(dir, ":");
		int n = snprintf(full, sizeof full, "%.*s%s%s", (int)len, dir, len ? "/" : "", prog);
		if (n > 0 && (size_t)n < sizeof full) {
			execve(full, argv, environ);
			if (errno != ENOENT && errno != ENOTDIR && saved == 0)
				saved = errno;
		}
		if (dir[len] == '\0')
			break;
	}
	if (saved)
		fail(126, prog, reason(saved));
	fail(127, prog, "executable file not found in $PATH");
}

/* The signals a container's init passes on to its program. */
static const int forwarded[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};

static int status_code(int status)
{
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}

/* Stay PID 1: the program is our child; orphans re-parent to us and are reaped. */
static int run_init(char **argv)
{
	sigset_t set, old;
	sigemptyset(&set);
	for (size_t i = 0; i < sizeof forwarded / sizeof *forwarded; i++)
		sigaddset(&set, forwarded[i]);
	sigaddset(&set, SIGCHLD);
	sigprocmask(SIG_BLOCK, &set, &old);

	pid_t child = fork();
	if (child < 0)
		fail(125, argv[0], reason(errno));
	if (child == 0) {
		sigprocmask(SIG_SETMASK, &old, NULL);
		exec_program(argv);
	}
	close(errfd); /* the child holds it until its execve */
	errfd = -1;
	for (;;) {
		siginfo_t info;
		if (sigwaitinfo(&set, &info) < 0)
			continue;
		if (info.si_signo != SIGCHLD) {
			kill(child, info.si_signo);
			continue;
		}
		int status;
		pid_t pid;
		while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
			if (pid == child)
				return status_code(status);
	}
}

int main(int argc, char **argv)
{
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	if (argc < 4 || (strcmp(argv[2], "exec") && strcmp(argv[2], "init"))) {
		static const char usage[] = "usage: mcinit ERRFD exec|init PROG [ARG...]\n";
		ssize_t ignored = write(2, usage, sizeof usage - 1);
		(void)ignored;
		return 125;
	}
	errfd = atoi(argv[1]);
	fcntl(errfd, F_SETFD, FD_CLOEXEC); /* closes when PROG starts: success */
	if (strcmp(argv[2], "init") == 0)
		return run_init(argv + 3);
	exec_program(argv + 3);
	return 125; /* not reached */
}
