/*
 * idle_procs: N idle processes for bench/flood.py, as cheap as a process can be.
 *
 * Build (bench/flood.py does it into /tmp): gcc -static -O2 -o idle_procs idle_procs.c
 * Usage:  idle_procs N
 *
 * Forks N children that only pause() (no exec: they share the parent's pages, copy on write).
 * Prints "ready N" on stdout once all are forked (or "failed K ERRNO-TEXT" and exits 1 after
 * taking down the K it made). On SIGTERM/SIGINT/SIGHUP the parent SIGKILLs every child and reaps
 * them all before it exits 0, so no zombie is left for PID 1. Children die with the parent
 * (PR_SET_PDEATHSIG SIGKILL), and the parent gets SIGTERM when the process that started it dies,
 * so even a SIGKILLed benchmark leaves nothing behind.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t *g_kids;
static long g_n;

static void take_down(void)
{
    for (long i = 0; i < g_n; i++)
        kill(g_kids[i], SIGKILL);
    while (wait(NULL) > 0 || errno == EINTR)
        ;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: idle_procs N\n");
        return 2;
    }
    long want = strtol(argv[1], NULL, 10);
    if (want < 0 || want > 4000000) {
        fprintf(stderr, "idle_procs: bad N %s\n", argv[1]);
        return 2;
    }
    pid_t starter = getppid();
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != starter)
        return 1; /* the starter is already gone */

    /* Signals that end us are only taken where we wait for them (sigwait), never mid-fork. */
    sigset_t ends;
    sigemptyset(&ends);
    sigaddset(&ends, SIGTERM);
    sigaddset(&ends, SIGINT);
    sigaddset(&ends, SIGHUP);
    sigprocmask(SIG_BLOCK, &ends, NULL);

    g_kids = calloc((size_t)want + 1, sizeof *g_kids);
    if (!g_kids) {
        printf("failed 0 %s\n", strerror(errno));
        return 1;
    }
    pid_t self = getpid();
    for (g_n = 0; g_n < want; g_n++) {
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != self)
                _exit(0);
            sigset_t none;
            sigemptyset(&none);
            sigprocmask(SIG_SETMASK, &none, NULL); /* default actions: SIGTERM ends a child too */
            for (;;)
                pause();
        }
        if (pid < 0) {
            int err = errno;
            take_down();
            printf("failed %ld %s\n", g_n, strerror(err));
            fflush(stdout);
            return 1;
        }
        g_kids[g_n] = pid;
    }
    printf("ready %ld\n", g_n);
    fflush(stdout);
    int sig = 0;
    sigwait(&ends, &sig);
    take_down();
    return 0;
}
