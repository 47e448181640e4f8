/*
 * fakepool: a minimal stratum pool for tests. Listens on a LOOPBACK address only, accepts
 * any number of connections (up to 128 at once), reads newline-terminated JSON lines and
 * answers them: login -> a job, keepalived -> KEEPALIVED, submit/other -> OK. Connections
 * stay open until the peer closes them.
 *
 * Build: gcc -static -O2 -pthread -o fakepool fakepool.c
 * Usage: fakepool PORT [--bind ADDR] [--seconds S] [--log FILE] [--port-file FILE] [--quiet]
 *   PORT 0 picks a free port (written to --port-file and to stderr).
 *   --bind ADDR   127.0.0.1 by default; only 127.0.0.0/8 and ::1 are accepted (else exit 3)
 *   --log FILE    append "RECV <line>" for every received line (default: stdout;
 *                 --quiet: nowhere); "CONN <peer>" and "CLOSE <peer>" lines too.
 *   --seconds S   exit 0 after S seconds; SIGTERM/SIGINT also exit 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXC 128
#define BUFSZ 65536

static volatile sig_atomic_t g_stop;
static void on_signal(int s) { (void)s; g_stop = 1; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct client { int fd; char peer[80]; char *buf; size_t len; };

static FILE *g_log;
static unsigned long g_session;

static void logf_line(const char *tag, const char *peer, const char *line)
{
    if (!g_log) return;
    if (line) fprintf(g_log, "%s %s\n", tag, line);
    else fprintf(g_log, "%s %s\n", tag, peer);
    fflush(g_log);
}

static long req_id(const char *line)
{
    const char *p = strstr(line, "\"id\"");
    if (!p) return 0;
    p += 4;
    while (*p == ' ' || *p == ':') p++;
    return strtol(p, NULL, 10);
}

static int method_is(const char *line, const char *name)
{
    const char *p = strstr(line, "\"method\"");
    if (!p) return 0;
    p += 8;
    while (*p == ' ' || *p == ':' || *p == '\t') p++;
    if (*p++ != '"') return 0;
    size_t n = strlen(name);
    return strncmp(p, name, n) == 0 && p[n] == '"';
}

static void reply(int fd, const char *line)
{
    char out[2048];
    long id = req_id(line);
    if (method_is(line, "login")) {
        g_session++;
        snprintf(out, sizeof out,
            "{\"id\":%ld,\"jsonrpc\":\"2.0\",\"error\":null,\"result\":{\"id\":\"sess%lu\","
            "\"job\":{\"blob\":\"1010a0d2c7ab06c8f3b1e4b8e0f1c0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e1f2000000001"
            "a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80904\","
            "\"job_id\":\"job%lu\",\"target\":\"b88d0600\",\"algo\":\"rx/0\",\"height\":3141592,"
            "\"seed_hash\":\"6c2f0f7e1f1d3b4c5a69788796a5b4c3d2e1f00112233445566778899aabbccd\"},"
            "\"extensions\":[\"algo\",\"nicehash\",\"connect\",\"tls\",\"keepalive\"],\"status\":\"OK\"}}\n",
            id, g_session, g_session);
    } else if (method_is(line, "keepalived")) {
        snprintf(out, sizeof out,
            "{\"id\":%ld,\"jsonrpc\":\"2.0\",\"error\":null,\"result\":{\"status\":\"KEEPALIVED\"}}\n", id);
    } else {
        snprintf(out, sizeof out,
            "{\"id\":%ld,\"jsonrpc\":\"2.0\",\"error\":null,\"result\":{\"status\":\"OK\"}}\n", id);
    }
    size_t n = strlen(out), off = 0;
    while (off < n) {
        ssize_t w = send(fd, out + off, n - off, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; return; }
        off += (size_t)w;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: fakepool PORT [--bind ADDR] [--seconds S] [--log FILE] [--port-file FILE] [--quiet]\n");
}

int main(int argc, char **argv)
{
    const char *bind_addr = "127.0.0.1", *log_path = NULL, *port_file = NULL;
    double seconds = 0;
    int port = -1, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--bind") && i + 1 < argc) bind_addr = argv[++i];
        else if (!strcmp(a, "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(a, "--log") && i + 1 < argc) log_path = argv[++i];
        else if (!strcmp(a, "--port-file") && i + 1 < argc) port_file = argv[++i];
        else if (!strcmp(a, "--quiet")) quiet = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(); return 0; }
        else if (a[0] != '-' && port < 0) port = atoi(a);
        else { usage(); return 2; }
    }
    if (port < 0 || port > 65535) { usage(); return 2; }

    struct sockaddr_storage ss; socklen_t sl;
    memset(&ss, 0, sizeof ss);
    struct in_addr a4; struct in6_addr a6;
    if (inet_pton(AF_INET, bind_addr, &a4) == 1) {
        if ((ntohl(a4.s_addr) >> 24) != 127) { fprintf(stderr, "fakepool: refusing non-loopback bind %s\n", bind_addr); return 3; }
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET; s->sin_port = htons((unsigned short)port); s->sin_addr = a4;
        sl = sizeof *s;
    } else if (inet_pton(AF_INET6, bind_addr, &a6) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6)) { fprintf(stderr, "fakepool: refusing non-loopback bind %s\n", bind_addr); return 3; }
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        s->sin6_family = AF_INET6; s->sin6_port = htons((unsigned short)port); s->sin6_addr = a6;
        sl = sizeof *s;
    } else {
        fprintf(stderr, "fakepool: bad bind address %s\n", bind_addr);
        return 2;
    }

    if (!quiet) {
        if (log_path) {
            g_log = fopen(log_path, "a");
            if (!g_log) { perror(log_path); return 2; }
        } else {
            g_log = stdout;
        }
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) { perror("socket"); return 2; }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&ss, sl) != 0) { perror("bind"); return 2; }
    if (listen(lfd, 64) != 0) { perror("listen"); return 2; }
    struct sockaddr_storage got; socklen_t gl = sizeof got;
    getsockname(lfd, (struct sockaddr *)&got, &gl);
    int real_port = ntohs(got.ss_family == AF_INET ? ((struct sockaddr_in *)&got)->sin_port
                                                    : ((struct sockaddr_in6 *)&got)->sin6_port);
    fprintf(stderr, "fakepool: listening on %s:%d\n", bind_addr, real_port);
    if (port_file) {
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
        FILE *pf = fopen(tmp, "w");
        if (pf) { fprintf(pf, "%d\n", real_port); fclose(pf); rename(tmp, port_file); }
    }

    struct client cl[MAXC];
    int ncl = 0;
    double deadline = seconds > 0 ? now_s() + seconds : 0;
    while (!g_stop && (!deadline || now_s() < deadline)) {
        struct pollfd pfd[MAXC + 1];
        pfd[0].fd = lfd; pfd[0].events = POLLIN;
        for (int i = 0; i < ncl; i++) { pfd[i + 1].fd = cl[i].fd; pfd[i + 1].events = POLLIN; }
        int pr = poll(pfd, (nfds_t)ncl + 1, 200);
        if (pr <= 0) continue;
        for (int i = ncl - 1; i >= 0; i--) {
            if (!(pfd[i + 1].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            struct client *c = &cl[i];
            ssize_t r = recv(c->fd, c->buf + c->len, BUFSZ - 1 - c->len, 0);
            if (r <= 0) {
                logf_line("CLOSE", c->peer, NULL);
                close(c->fd); free(c->buf);
                cl[i] = cl[--ncl];
                continue;
            }
            c->len += (size_t)r;
            c->buf[c->len] = '\0';
            char *nl;
            while ((nl = strchr(c->buf, '\n'))) {
                *nl = '\0';
                if (nl > c->buf && nl[-1] == '\r') nl[-1] = '\0';
                if (c->buf[0]) { logf_line("RECV", c->peer, c->buf); reply(c->fd, c->buf); }
                size_t rest = c->len - (size_t)(nl + 1 - c->buf);
                memmove(c->buf, nl + 1, rest);
                c->len = rest;
                c->buf[c->len] = '\0';
            }
            if (c->len >= BUFSZ - 1) c->len = 0;
        }
        if (pfd[0].revents & POLLIN) {
            struct sockaddr_storage peer; socklen_t pl = sizeof peer;
            int fd = accept4(lfd, (struct sockaddr *)&peer, &pl, SOCK_CLOEXEC);
            if (fd >= 0) {
                if (ncl >= MAXC) { close(fd); continue; }
                struct client *c = &cl[ncl++];
                c->fd = fd; c->len = 0; c->buf = malloc(BUFSZ);
                char ip[64] = "?";
                int pp = 0;
                if (peer.ss_family == AF_INET) {
                    inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, ip, sizeof ip);
                    pp = ntohs(((struct sockaddr_in *)&peer)->sin_port);
                } else {
                    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, ip, sizeof ip);
                    pp = ntohs(((struct sockaddr_in6 *)&peer)->sin6_port);
                }
                snprintf(c->peer, sizeof c->peer, "%s:%d", ip, pp);
                logf_line("CONN", c->peer, NULL);
            }
        }
    }
    for (int i = 0; i < ncl; i++) { close(cl[i].fd); free(cl[i].buf); }
    close(lfd);
    return 0;
}
