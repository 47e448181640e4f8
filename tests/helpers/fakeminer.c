/*
 * fakeminer: a test stand-in for XMRig. It looks like xmrig on the wire (stratum login,
 * keepalived, submit), on the CPU (N flat busy threads) and, in the default build, in its
 * strings - but it mines nothing, and it only ever connects to LOOPBACK addresses.
 *
 * Build:  gcc -static -O2 -pthread -DWITH_STRINGS -o fakeminer       fakeminer.c
 *         gcc -static -O2 -pthread -DOBFUSCATED   -o fakeminer-plain fakeminer.c
 *   WITH_STRINGS (the default when neither is given): typical xmrig strings are plain
 *   literals in the binary (what YARA rules on files match).
 *   OBFUSCATED: the same strings are stored XOR-encoded and decoded into the heap at start,
 *   so a file scan misses them while a memory scan of the running process finds them.
 *
 * Flags (xmrig-compatible):
 *   -o, --url URL          pool: stratum+tcp://HOST:PORT, stratum+ssl://..., any scheme,
 *                          or scheme-less HOST:PORT; [::1]:PORT for IPv6
 *   -u, --user WALLET      login (default "x")
 *   -p, --pass PASS        password (default "x")
 *   -t, --threads N        busy hashing threads (default 1; 0: none)
 *   -a, --algo ALGO        algorithm announced at login (default rx/0)
 *   -c, --config FILE      xmrig JSON config; pools[0].url/user/pass are used
 *   --donate-level N, --coin X, --rig-id X, --randomx-mode X, --cpu-max-threads-hint N,
 *   --cpu-priority N, --log-file F, --print-time N ... accepted and ignored (value taken);
 *   -k/--keepalive, --tls, --no-huge-pages, -B/--background, --nicehash, --no-color ...
 *   accepted and ignored (no value).
 * Test-only flags:
 *   --seconds S            exit 0 after S seconds (fractions allowed)
 *   --keepalive-secs S     keepalived period (default 5)
 *   --submit-secs S        fake share submit period once a job arrived (default 10; 0 off)
 *   --alloc-mb N           allocate and touch N MiB of anonymous memory (RandomX-like)
 *   --idle-threads N       extra threads that only sleep (xmrig has a few)
 *   --name NAME            set the process name (comm), e.g. kworker/0:1
 * Without -o it reads config.json in the cwd, then next to its binary, then ~/.xmrig.json,
 * then ~/.config/xmrig.json.
 * Host names: only "localhost" and names in /etc/hosts are resolved (no DNS, ever).
 * Exit codes: 0 done (--seconds elapsed, SIGTERM/SIGINT), 2 usage/config error,
 *             3 refused: the pool address is not loopback (or cannot be resolved locally).
 * TLS: stratum+ssl:// and --tls are accepted but the connection stays plain TCP.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(OBFUSCATED) && defined(WITH_STRINGS)
#error "define only one of OBFUSCATED and WITH_STRINGS"
#endif
#if !defined(OBFUSCATED) && !defined(WITH_STRINGS)
#define WITH_STRINGS 1
#endif

#define XKEY 0xA5
struct sstr { const char *data; size_t len; int xored; };
#ifdef OBFUSCATED
#define S(plain, enc) { enc, sizeof(enc) - 1, 1 }
#else
#define S(plain, enc) { plain, sizeof(plain) - 1, 0 }
#endif

enum {
    STR_BANNER, STR_AGENT, STR_AGENT_FMT, STR_DONATE_TCP, STR_DONATE_SSL, STR_OPT_DONATE,
    STR_OPT_DONATE_N, STR_STRATUM_TCP, STR_STRATUM_SSL, STR_CN_R, STR_RANDOMX, STR_RX_MODE,
    STR_CFG_HOME, STR_CFG_DOT, STR_EXE_ENV, STR_COUNT
};

/* Generated with: ''.join('\\x%02x' % (ord(c) ^ 0xA5) for c in plain) */
static const struct sstr g_raw[STR_COUNT] __attribute__((used)) = {
    [STR_BANNER] = S("XMRig 6.26.0",
      "\xfd\xe8\xf7\xcc\xc2\x85\x93\x8b\x97\x93\x8b\x95"),
    [STR_AGENT] = S("XMRig/6.26.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0",
      "\xfd\xe8\xf7\xcc\xc2\x8a\x93\x8b\x97\x93\x8b\x95\x85\x8d\xe9\xcc\xcb\xd0\xdd\x85\xdd\x9d\x93\xfa\x93\x91\x8c\x85\xc9\xcc\xc7\xd0\xd3\x8a\x94\x8b\x91\x91\x8b\x97\x85\xc2\xc6\xc6\x8a\x94\x97\x8b\x97\x8b\x95"),
    [STR_AGENT_FMT] = S("%s/%s (Linux x86_64) libuv/%s",
      "\x80\xd6\x8a\x80\xd6\x85\x8d\xe9\xcc\xcb\xd0\xdd\x85\xdd\x9d\x93\xfa\x93\x91\x8c\x85\xc9\xcc\xc7\xd0\xd3\x8a\x80\xd6"),
    [STR_DONATE_TCP] = S("donate.v2.xmrig.com",
      "\xc1\xca\xcb\xc4\xd1\xc0\x8b\xd3\x97\x8b\xdd\xc8\xd7\xcc\xc2\x8b\xc6\xca\xc8"),
    [STR_DONATE_SSL] = S("donate.ssl.xmrig.com",
      "\xc1\xca\xcb\xc4\xd1\xc0\x8b\xd6\xd6\xc9\x8b\xdd\xc8\xd7\xcc\xc2\x8b\xc6\xca\xc8"),
    [STR_OPT_DONATE] = S("--donate-level",
      "\x88\x88\xc1\xca\xcb\xc4\xd1\xc0\x88\xc9\xc0\xd3\xc0\xc9"),
    [STR_OPT_DONATE_N] = S("--donate-level=N",
      "\x88\x88\xc1\xca\xcb\xc4\xd1\xc0\x88\xc9\xc0\xd3\xc0\xc9\x98\xeb"),
    [STR_STRATUM_TCP] = S("stratum+tcp://",
      "\xd6\xd1\xd7\xc4\xd1\xd0\xc8\x8e\xd1\xc6\xd5\x9f\x8a\x8a"),
    [STR_STRATUM_SSL] = S("stratum+ssl://",
      "\xd6\xd1\xd7\xc4\xd1\xd0\xc8\x8e\xd6\xd6\xc9\x9f\x8a\x8a"),
    [STR_CN_R] = S("cryptonight/r",
      "\xc6\xd7\xdc\xd5\xd1\xca\xcb\xcc\xc2\xcd\xd1\x8a\xd7"),
    [STR_RANDOMX] = S("randomx",
      "\xd7\xc4\xcb\xc1\xca\xc8\xdd"),
    [STR_RX_MODE] = S("--randomx-mode=MODE",
      "\x88\x88\xd7\xc4\xcb\xc1\xca\xc8\xdd\x88\xc8\xca\xc1\xc0\x98\xe8\xea\xe1\xe0"),
    [STR_CFG_HOME] = S(".config/xmrig.json",
      "\x8b\xc6\xca\xcb\xc3\xcc\xc2\x8a\xdd\xc8\xd7\xcc\xc2\x8b\xcf\xd6\xca\xcb"),
    [STR_CFG_DOT] = S(".xmrig.json",
      "\x8b\xdd\xc8\xd7\xcc\xc2\x8b\xcf\xd6\xca\xcb"),
    [STR_EXE_ENV] = S("XMRIG_EXE",
      "\xfd\xe8\xf7\xec\xe2\xfa\xe0\xfd\xe0"),
};

/* Heap copies (decoded in the OBFUSCATED build), kept for the whole run: a memory scan
 * of the process finds them. */
static char *g_str[STR_COUNT];
static volatile unsigned char g_key = XKEY;

static void decode_strings(void)
{
    for (int i = 0; i < STR_COUNT; i++) {
        const volatile unsigned char *src = (const volatile unsigned char *)g_raw[i].data;
        size_t n = g_raw[i].len;
        char *dst = malloc(n + 1);
        if (!dst) { perror("malloc"); exit(2); }
        for (size_t j = 0; j < n; j++)
            dst[j] = (char)(g_raw[i].xored ? (src[j] ^ g_key) : src[j]);
        dst[n] = '\0';
        g_str[i] = dst;
    }
}

static volatile sig_atomic_t g_stop;
static volatile uint64_t g_sink;

static void on_signal(int sig) { (void)sig; g_stop = 1; }

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("[fakeminer] ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void *busy_thread(void *arg)
{
    uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)arg;
    while (!g_stop) {
        for (int i = 0; i < (1 << 18); i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            x = x * 0xff51afd7ed558ccdull + (uint64_t)i;
        }
        g_sink += x;
    }
    return NULL;
}

static void *idle_thread(void *arg)
{
    (void)arg;
    while (!g_stop) usleep(200000);
    return NULL;
}

/* ---- tiny JSON-ish extraction ---------------------------------------------------- */

/* Finds "key" : "value" at or after p; copies value into out. Returns pointer past it. */
static const char *json_str(const char *p, const char *key, char *out, size_t outlen)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *k = strstr(p, pat);
    while (k) {
        const char *q = k + strlen(pat);
        while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n') q++;
        if (*q == ':') {
            q++;
            while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\n') q++;
            if (*q == '"') {
                q++;
                size_t n = 0;
                while (*q && *q != '"' && n + 1 < outlen) out[n++] = *q++;
                out[n] = '\0';
                return q;
            }
        }
        k = strstr(k + 1, pat);
    }
    return NULL;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 20, n;
    char *buf = malloc(cap + 1);
    if (!buf) { fclose(f); return NULL; }
    n = fread(buf, 1, cap, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

struct opts {
    char url[512], user[512], pass[256], algo[64], config[1024], name[16];
    int threads, idle_threads, have_url, alloc_mb;
    double seconds, keepalive_s, submit_s;
};

static int load_config(const char *path, struct opts *o)
{
    char *buf = read_file(path);
    if (!buf) return -1;
    const char *pools = strstr(buf, "\"pools\"");
    if (!pools) { free(buf); return -2; }
    char url[512] = "";
    if (!json_str(pools, "url", url, sizeof url) || !url[0]) { free(buf); return -2; }
    if (!o->have_url) { snprintf(o->url, sizeof o->url, "%s", url); o->have_url = 1; }
    char tmp[512];
    if (!o->user[0] && json_str(pools, "user", tmp, sizeof tmp)) snprintf(o->user, sizeof o->user, "%s", tmp);
    if (!o->pass[0] && json_str(pools, "pass", tmp, sizeof tmp)) snprintf(o->pass, sizeof o->pass, "%s", tmp);
    if (!o->algo[0] && json_str(pools, "algo", tmp, sizeof tmp)) snprintf(o->algo, sizeof o->algo, "%s", tmp);
    free(buf);
    info("config %s", path);
    return 0;
}

static int find_config(struct opts *o)
{
    char path[2048];
    if (o->config[0]) return load_config(o->config, o) == 0 ? 0 : -1;
    if (load_config("config.json", o) == 0) return 0;
    char exe[1024];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(path, sizeof path, "%s/config.json", exe);
            if (load_config(path, o) == 0) return 0;
        }
    }
    const char *home = getenv("HOME");
    if (home) {
        snprintf(path, sizeof path, "%s/%s", home, g_str[STR_CFG_DOT]);
        if (load_config(path, o) == 0) return 0;
        snprintf(path, sizeof path, "%s/%s", home, g_str[STR_CFG_HOME]);
        if (load_config(path, o) == 0) return 0;
    }
    return -1;
}

/* ---- address handling: loopback only ------------------------------------------- */

static int lookup_hosts(const char *name, char *ip, size_t iplen)
{
    FILE *f = fopen("/etc/hosts", "r");
    if (!f) return -1;
    char line[1024];
    int found = -1;
    while (found < 0 && fgets(line, sizeof line, f)) {
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
        if (!tok) continue;
        char addr[128];
        snprintf(addr, sizeof addr, "%s", tok);
        while ((tok = strtok_r(NULL, " \t\r\n", &save))) {
            if (strcasecmp(tok, name) == 0) {
                snprintf(ip, iplen, "%s", addr);
                found = 0;
                break;
            }
        }
    }
    fclose(f);
    return found;
}

/* Fills ss with a loopback address; returns 0, or 3 when refused. */
static int resolve_loopback(const char *host, int port, struct sockaddr_storage *ss, socklen_t *sl)
{
    char ip[128];
    if (strcasecmp(host, "localhost") == 0) snprintf(ip, sizeof ip, "127.0.0.1");
    else snprintf(ip, sizeof ip, "%s", host);

    struct in_addr a4; struct in6_addr a6;
    int is4 = inet_pton(AF_INET, ip, &a4) == 1;
    int is6 = !is4 && inet_pton(AF_INET6, ip, &a6) == 1;
    if (!is4 && !is6) {
        if (lookup_hosts(host, ip, sizeof ip) != 0) {
            info("cannot resolve %s without DNS; refusing", host);
            return 3;
        }
        is4 = inet_pton(AF_INET, ip, &a4) == 1;
        is6 = !is4 && inet_pton(AF_INET6, ip, &a6) == 1;
        if (!is4 && !is6) { info("bad address %s for %s; refusing", ip, host); return 3; }
    }
    memset(ss, 0, sizeof *ss);
    if (is4) {
        if ((ntohl(a4.s_addr) >> 24) != 127) { info("refusing non-loopback address %s", ip); return 3; }
        struct sockaddr_in *s = (struct sockaddr_in *)ss;
        s->sin_family = AF_INET; s->sin_port = htons((uint16_t)port); s->sin_addr = a4;
        *sl = sizeof *s;
    } else {
        int loop = IN6_IS_ADDR_LOOPBACK(&a6) ||
                   (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
        if (!loop) { info("refusing non-loopback address %s", ip); return 3; }
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
        s->sin6_family = AF_INET6; s->sin6_port = htons((uint16_t)port); s->sin6_addr = a6;
        *sl = sizeof *s;
    }
    return 0;
}

/* Parses [scheme://]host:port[/...]; returns 0 or -1. */
static int parse_url(const char *url, char *host, size_t hostlen, int *port, int *tls)
{
    const char *p = strstr(url, "://");
    *tls = 0;
    if (p) {
        size_t sl = (size_t)(p - url);
        char scheme[64];
        snprintf(scheme, sizeof scheme, "%.*s", (int)(sl < 63 ? sl : 63), url);
        if (strstr(scheme, "ssl") || strstr(scheme, "tls")) *tls = 1;
        p += 3;
    } else {
        p = url;
    }
    char buf[512];
    snprintf(buf, sizeof buf, "%s", p);
    char *slash = strchr(buf, '/');
    if (slash) *slash = '\0';
    char *portstr;
    if (buf[0] == '[') {
        char *end = strchr(buf, ']');
        if (!end || end[1] != ':') return -1;
        *end = '\0';
        snprintf(host, hostlen, "%s", buf + 1);
        portstr = end + 2;
    } else {
        char *colon = strrchr(buf, ':');
        if (!colon) return -1;
        *colon = '\0';
        snprintf(host, hostlen, "%s", buf);
        portstr = colon + 1;
    }
    char *endp;
    long v = strtol(portstr, &endp, 10);
    if (*endp || v <= 0 || v > 65535 || !host[0]) return -1;
    *port = (int)v;
    return 0;
}

/* ---- stratum --------------------------------------------------------------------- */

static int send_line(int fd, const char *line)
{
    size_t n = strlen(line), off = 0;
    while (off < n) {
        ssize_t w = send(fd, line + off, n - off, MSG_NOSIGNAL);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        off += (size_t)w;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
        "usage: fakeminer [-o URL] [-u USER] [-p PASS] [-t N] [-a ALGO] [-c FILE]\n"
        "                 [--seconds S] [--keepalive-secs S] [--submit-secs S]\n"
        "                 [--alloc-mb N] [--idle-threads N] [--name COMM]\n"
        "see the comment at the top of fakeminer.c\n");
}

static int is_bool_flag(const char *name)
{
    static const char *const flags[] = {
        "-k", "--keepalive", "--tls", "--no-huge-pages", "-B", "--background", "--nicehash",
        "--no-color", "--huge-pages-jit", "--daemon", "--no-cpu", "--http-enabled",
        "-S", "--syslog", "--verbose", "--dry-run", "--pause-on-battery",
        NULL };
    for (int i = 0; flags[i]; i++)
        if (strcmp(name, flags[i]) == 0) return 1;
    return 0;
}

int main(int argc, char **argv)
{
    decode_strings();
    if (isatty(1)) printf(" * ABOUT        %s gcc/12.2.0\n", g_str[STR_BANNER]);

    struct opts o;
    memset(&o, 0, sizeof o);
    o.threads = 1; o.keepalive_s = 5; o.submit_s = 10;

    for (int i = 1; i < argc; i++) {
        char name[128]; const char *val = NULL;
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0') continue;       /* stray positional: ignore */
        if (a[1] == '-') {
            const char *eq = strchr(a, '=');
            if (eq) { snprintf(name, sizeof name, "%.*s", (int)(eq - a), a); val = eq + 1; }
            else snprintf(name, sizeof name, "%s", a);
        } else {
            snprintf(name, sizeof name, "%.2s", a);
            if (a[2]) val = a + 2;
        }
        if (!strcmp(name, "-h") || !strcmp(name, "--help")) { usage(); return 0; }
        if (!strcmp(name, "-V") || !strcmp(name, "--version")) { printf("%s\n", g_str[STR_BANNER]); return 0; }
        if (is_bool_flag(name)) continue;
        /* --randomx-*: -init and -mode take a value, the others are switches (the word is
         * compared decoded so that the OBFUSCATED build does not carry it in clear) */
        size_t rxl = strlen(g_str[STR_RANDOMX]);
        if (!strncmp(name, "--", 2) && !strncmp(name + 2, g_str[STR_RANDOMX], rxl)) {
            const char *suffix = name + 2 + rxl;
            if (!val && (!strcmp(suffix, "-init") || !strcmp(suffix, "-mode")) && i + 1 < argc) i++;
            continue;
        }
#define NEEDVAL() do { if (!val) { if (i + 1 >= argc) { info("option %s needs a value", name); usage(); return 2; } val = argv[++i]; } } while (0)
        if (!strcmp(name, "-o") || !strcmp(name, "--url")) { NEEDVAL(); snprintf(o.url, sizeof o.url, "%s", val); o.have_url = 1; }
        else if (!strcmp(name, "-u") || !strcmp(name, "--user")) { NEEDVAL(); snprintf(o.user, sizeof o.user, "%s", val); }
        else if (!strcmp(name, "-p") || !strcmp(name, "--pass")) { NEEDVAL(); snprintf(o.pass, sizeof o.pass, "%s", val); }
        else if (!strcmp(name, "-t") || !strcmp(name, "--threads")) { NEEDVAL(); o.threads = atoi(val); }
        else if (!strcmp(name, "-a") || !strcmp(name, "--algo")) { NEEDVAL(); snprintf(o.algo, sizeof o.algo, "%s", val); }
        else if (!strcmp(name, "-c") || !strcmp(name, "--config")) { NEEDVAL(); snprintf(o.config, sizeof o.config, "%s", val); }
        else if (!strcmp(name, "--seconds")) { NEEDVAL(); o.seconds = atof(val); }
        else if (!strcmp(name, "--keepalive-secs")) { NEEDVAL(); o.keepalive_s = atof(val); }
        else if (!strcmp(name, "--submit-secs")) { NEEDVAL(); o.submit_s = atof(val); }
        else if (!strcmp(name, "--alloc-mb")) { NEEDVAL(); o.alloc_mb = atoi(val); }
        else if (!strcmp(name, "--idle-threads")) { NEEDVAL(); o.idle_threads = atoi(val); }
        else if (!strcmp(name, "--name")) { NEEDVAL(); snprintf(o.name, sizeof o.name, "%s", val); }
        else if (!strcmp(name, g_str[STR_OPT_DONATE])) { NEEDVAL(); }
        else {
            /* unknown option (xmrig has many): take the next word as its value if it
             * does not look like an option */
            if (!val && i + 1 < argc && argv[i + 1][0] != '-') i++;
        }
#undef NEEDVAL
    }
    if (o.threads < 0) o.threads = 0;
    if (o.threads > 256) o.threads = 256;
    if (o.idle_threads < 0) o.idle_threads = 0;
    if (o.idle_threads > 64) o.idle_threads = 64;

    if (!o.have_url && find_config(&o) != 0) {
        info("no pool: give -o URL or a config.json with pools");
        return 2;
    }
    if (!o.user[0]) snprintf(o.user, sizeof o.user, "x");
    if (!o.pass[0]) snprintf(o.pass, sizeof o.pass, "x");
    if (!o.algo[0]) snprintf(o.algo, sizeof o.algo, "rx/0");

    char host[256]; int port, tls;
    if (parse_url(o.url, host, sizeof host, &port, &tls) != 0) {
        info("bad pool url '%s'", o.url);
        return 2;
    }
    struct sockaddr_storage ss; socklen_t sl = 0;
    int rc = resolve_loopback(host, port, &ss, &sl);
    if (rc) return rc;                      /* safety net: never leave the machine */

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (o.name[0]) prctl(PR_SET_NAME, o.name, 0, 0, 0);

    if (o.alloc_mb > 0) {
        size_t sz = (size_t)o.alloc_mb << 20;
        unsigned char *m = mmap(NULL, sz, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) { perror("mmap"); return 2; }
        for (size_t off = 0; off < sz; off += 4096) m[off] = (unsigned char)(off >> 12);
        info("allocated %d MiB", o.alloc_mb);
    }

    pthread_t th[256 + 64];
    int nth = 0;
    for (int i = 0; i < o.threads; i++)
        if (pthread_create(&th[nth], NULL, busy_thread, (void *)(uintptr_t)(i + 1)) == 0) nth++;
    for (int i = 0; i < o.idle_threads; i++)
        if (pthread_create(&th[nth], NULL, idle_thread, NULL) == 0) nth++;

    double start = now_s();
    double deadline = o.seconds > 0 ? start + o.seconds : 0;
    info("pool %s:%d%s user %s threads %d", host, port, tls ? " (tls requested, plain tcp)" : "", o.user, o.threads);

    int msg_id = 1;
    while (!g_stop && (!deadline || now_s() < deadline)) {
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) { perror("socket"); break; }
        if (connect(fd, (struct sockaddr *)&ss, sl) != 0) {
            close(fd);
            for (int k = 0; k < 5 && !g_stop && (!deadline || now_s() < deadline); k++) usleep(100000);
            continue;
        }
        char line[2048];
        snprintf(line, sizeof line,
                 "{\"id\":%d,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{\"login\":\"%s\","
                 "\"pass\":\"%s\",\"agent\":\"%s\",\"algo\":[\"%s\"]}}\n",
                 msg_id++, o.user, o.pass, g_str[STR_AGENT], o.algo);
        if (send_line(fd, line) != 0) { close(fd); continue; }
        info("connected, login sent");

        char sid[128] = "x", job[128] = "";
        char buf[16384]; size_t blen = 0;
        double last_ka = now_s(), last_submit = now_s();
        uint32_t nonce = 0;
        int alive = 1;
        while (alive && !g_stop && (!deadline || now_s() < deadline)) {
            struct pollfd pfd = { .fd = fd, .events = POLLIN };
            int pr = poll(&pfd, 1, 200);
            if (pr > 0) {
                ssize_t r = recv(fd, buf + blen, sizeof buf - 1 - blen, 0);
                if (r <= 0) { alive = 0; break; }
                blen += (size_t)r;
                buf[blen] = '\0';
                char *nl;
                while ((nl = strchr(buf, '\n'))) {
                    *nl = '\0';
                    const char *res = strstr(buf, "\"result\"");
                    char tmp[128];
                    if (res && json_str(res, "id", tmp, sizeof tmp)) snprintf(sid, sizeof sid, "%s", tmp);
                    if (json_str(buf, "job_id", tmp, sizeof tmp)) snprintf(job, sizeof job, "%s", tmp);
                    size_t rest = blen - (size_t)(nl + 1 - buf);
                    memmove(buf, nl + 1, rest);
                    blen = rest;
                    buf[blen] = '\0';
                }
                if (blen >= sizeof buf - 1) blen = 0;   /* overlong line: drop */
            }
            double t = now_s();
            if (o.keepalive_s > 0 && t - last_ka >= o.keepalive_s) {
                snprintf(line, sizeof line,
                         "{\"id\":%d,\"jsonrpc\":\"2.0\",\"method\":\"keepalived\",\"params\":{\"id\":\"%s\"}}\n",
                         msg_id++, sid);
                if (send_line(fd, line) != 0) alive = 0;
                last_ka = t;
            }
            if (alive && job[0] && o.submit_s > 0 && t - last_submit >= o.submit_s) {
                nonce += 0x1337;
                snprintf(line, sizeof line,
                         "{\"id\":%d,\"jsonrpc\":\"2.0\",\"method\":\"submit\",\"params\":{\"id\":\"%s\","
                         "\"job_id\":\"%s\",\"nonce\":\"%08x\",\"result\":\"%016llx%016llx%016llx%016llx\","
                         "\"algo\":\"%s\"}}\n",
                         msg_id++, sid, job, nonce, (unsigned long long)g_sink, (unsigned long long)nonce,
                         (unsigned long long)~g_sink, 0ull, o.algo);
                if (send_line(fd, line) != 0) alive = 0;
                last_submit = t;
            }
        }
        close(fd);
        if (!g_stop && (!deadline || now_s() < deadline)) {
            info("connection lost, reconnecting");
            usleep(300000);
        }
    }

    g_stop = 1;
    for (int i = 0; i < nth; i++) pthread_join(th[i], NULL);
    return 0;
}
