/*
 * loadgen.c - closed-loop memcached text-protocol load generator.
 *
 * Single thread, epoll, non-blocking sockets. Each connection sends a batch
 * of `depth` requests in one write, waits for all replies, records one
 * latency sample (per request when depth == 1, per batch round trip when
 * depth > 1) and immediately sends the next batch.
 *
 * Phases: preload (blocking, fills the keyspace so gets hit), warm-up
 * (load, not recorded), measure (until --duration or --requests, whichever
 * comes first). Replies are fully parsed (VALUE <k> <f> <len> + data by
 * length ... END, STORED), so completed requests are counted exactly.
 * ERROR / CLIENT_ERROR / SERVER_ERROR replies are counted as errors; any
 * other reply means the stream is out of sync and is fatal.
 *
 * Output: one JSON line on stdout. Exit status 0 = ok, 3 = error replies
 * seen, 2 = fatal (connect failure, desync, EOF, stall).
 *
 * TLS (--tls-ca): every connection, the preload's too, speaks TLS (OpenSSL,
 * the server's certificate verified against the CA and --tls-name); the
 * handshakes are done before the warm-up, so only the records are measured.
 *
 * Build: cc -O2 -o loadgen loadgen.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define MAX_DEPTH 1024
#define MAX_CONNS 4096
#define HIST_US (1 << 20)          /* 1 us buckets up to ~1 s, then overflow */
#define MAX_DURATION 600.0         /* hard bound on any run, seconds */
#define STALL_S 5.0                /* no completion this long => fatal */

enum { REQ_GET, REQ_SET };
enum { W_GET90, W_MULTIGET10, W_SET1K };

typedef struct {
    int fd;
    SSL *ssl;                      /* NULL in plain TCP */
    char *out; size_t out_len, out_off, out_cap;
    char *in;  size_t in_len, in_cap;
    unsigned char kind[MAX_DEPTH]; /* outstanding requests, in send order */
    int head, pending;             /* next reply expected, replies missing */
    int want_out;                  /* EPOLLOUT currently registered */
    double t_sent;                 /* batch send time */
} conn_t;

/* options */
static const char *host = "127.0.0.1";
static int port = 11211, nconns = 50, depth = 1, keyspace = 10000;
static int workload = W_GET90, preload = 1, verbose = 0;
static double duration = 5.0, warmup = 1.0;
static long max_requests = 0;      /* 0 = only bounded by duration */
static const char *wl_name = "get90";
static const char *tls_ca, *tls_name;   /* TLS when tls_ca is set */
static SSL_CTX *tls_ctx;

/* state */
static int epfd, measuring, running = 1;
static uint32_t *hist;
static long n_done, n_errors, n_hits, n_keys, n_overflow;
static double max_lat_us, last_progress;
static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static char value[1024];
static int value_len;

static void die(const char *fmt, ...) {
    va_list ap; va_start(ap, fmt);
    fprintf(stderr, "loadgen: FATAL: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static const char *ssl_why(void) {
    static char buf[256];
    unsigned long e = ERR_get_error();
    if (!e) return strerror(errno);
    ERR_error_string_n(e, buf, sizeof buf);
    return buf;
}

/* One write or read: bytes moved; 0 for "not now" (would block); dies on errors.
 * In TLS the record layer decides: a read may want a write and the reverse
 * (not after a TLS 1.3 handshake without key updates; treated as "not now"). */
static ssize_t io(conn_t *c, int writing, void *buf, size_t len) {
    if (!c->ssl) {
        ssize_t n = writing ? write(c->fd, buf, len) : read(c->fd, buf, len);
        if (n > 0) return n;
        if (n == 0) die("server closed connection");
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
        die("%s: %s", writing ? "write" : "read", strerror(errno));
    }
    size_t n = 0;
    int ok = writing ? SSL_write_ex(c->ssl, buf, len, &n) : SSL_read_ex(c->ssl, buf, len, &n);
    if (ok) return (ssize_t)n;
    int err = SSL_get_error(c->ssl, 0);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return 0;
    if (err == SSL_ERROR_ZERO_RETURN) die("server closed connection (close_notify)");
    die("TLS %s: %s", writing ? "write" : "read", ssl_why());
    return -1;
}

static double now(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_self(void) {
    struct rusage ru; getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

static uint64_t rnd(void) {        /* xorshift64 */
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng;
}

static void out_reserve(conn_t *c, size_t extra) {
    if (c->out_len + extra <= c->out_cap) return;
    while (c->out_len + extra > c->out_cap) c->out_cap *= 2;
    if (!(c->out = realloc(c->out, c->out_cap))) die("out of memory");
}

static void add_set(conn_t *c, long key) {
    out_reserve(c, 64 + value_len);
    c->out_len += sprintf(c->out + c->out_len, "set key:%ld 0 0 %d\r\n", key, value_len);
    memcpy(c->out + c->out_len, value, value_len);
    c->out_len += value_len;
    memcpy(c->out + c->out_len, "\r\n", 2);
    c->out_len += 2;
}

static void add_get(conn_t *c, int nkeys) {
    out_reserve(c, 16 + 24 * nkeys);
    memcpy(c->out + c->out_len, "get", 3); c->out_len += 3;
    for (int i = 0; i < nkeys; i++)
        c->out_len += sprintf(c->out + c->out_len, " key:%ld", (long)(rnd() % keyspace));
    memcpy(c->out + c->out_len, "\r\n", 2); c->out_len += 2;
}

static void set_events(conn_t *c, int want_out) {
    if (c->want_out == want_out) return;
    struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c };
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    c->want_out = want_out;
}

static void flush_out(conn_t *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = io(c, 1, c->out + c->out_off, c->out_len - c->out_off);
        if (n == 0) { set_events(c, 1); return; }
        c->out_off += n;
    }
    c->out_off = c->out_len = 0;
    set_events(c, 0);
}

static void send_batch(conn_t *c) {
    for (int i = 0; i < depth; i++) {
        int pct = rnd() % 100;
        int is_set = workload == W_GET90 ? pct < 10 : workload == W_SET1K ? pct < 90 : 0;
        if (is_set) add_set(c, rnd() % keyspace);
        else add_get(c, workload == W_MULTIGET10 ? 10 : 1);
        c->kind[i] = is_set ? REQ_SET : REQ_GET;
    }
    c->head = 0;
    c->pending = depth;
    c->t_sent = now();
    flush_out(c);
}

static void record(double secs) {
    double us = secs * 1e6;
    if (us > max_lat_us) max_lat_us = us;
    if (us < HIST_US) hist[(long)us]++; else n_overflow++;
}

/* One reply finished (ok or error). */
static void complete(conn_t *c, double t) {
    c->head++;
    c->pending--;
    last_progress = t;
    if (measuring) {
        n_done++;
        if (c->kind[c->head - 1] == REQ_GET) n_keys += workload == W_MULTIGET10 ? 10 : 1;
        if (depth == 1 || c->pending == 0) record(t - c->t_sent);
        if (max_requests && n_done >= max_requests) running = 0;
    }
    if (c->pending == 0 && running) send_batch(c);
}

static int starts(const char *p, size_t n, const char *s) {
    size_t l = strlen(s);
    return n >= l && memcmp(p, s, l) == 0;
}

/* Parse as many complete replies as are buffered. */
static void parse(conn_t *c) {
    size_t pos = 0;
    double t = now();
    while (c->pending > 0) {
        char *line = c->in + pos;
        char *nl = memchr(line, '\n', c->in_len - pos);
        if (!nl) break;
        if (nl == line || nl[-1] != '\r') die("reply line not CRLF-terminated");
        size_t len = nl - line - 1;            /* without \r\n */
        size_t next = pos + len + 2;
        int kind = c->kind[c->head];
        if (kind == REQ_GET && starts(line, len, "VALUE ")) {
            /* VALUE <key> <flags> <bytes> [<cas>] */
            char tmp[300];
            if (len >= sizeof tmp) die("VALUE line too long");
            memcpy(tmp, line, len); tmp[len] = 0;
            long bytes;
            if (sscanf(tmp, "VALUE %*s %*u %ld", &bytes) != 1 || bytes < 0)
                die("bad VALUE line: %s", tmp);
            if (next + bytes + 2 > c->in_len) break;   /* data not all here yet */
            if (memcmp(c->in + next + bytes, "\r\n", 2)) die("VALUE data not followed by CRLF");
            pos = next + bytes + 2;
            if (measuring) n_hits++;
            continue;
        }
        pos = next;
        if (kind == REQ_GET && len == 3 && starts(line, len, "END")) {
            complete(c, t);
        } else if (kind == REQ_SET && len == 6 && starts(line, len, "STORED")) {
            complete(c, t);
        } else if (starts(line, len, "ERROR") || starts(line, len, "CLIENT_ERROR") ||
                   starts(line, len, "SERVER_ERROR") || starts(line, len, "NOT_STORED")) {
            if (n_errors++ < 5 || verbose)
                fprintf(stderr, "loadgen: unexpected reply: %.*s\n", (int)len, line);
            complete(c, t);
        } else {
            die("protocol desync, got: %.*s", (int)(len > 200 ? 200 : len), line);
        }
    }
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
}

static void on_readable(conn_t *c) {
    for (;;) {
        if (c->in_len == c->in_cap) {
            c->in_cap *= 2;
            if (!(c->in = realloc(c->in, c->in_cap))) die("out of memory");
        }
        ssize_t n = io(c, 0, c->in + c->in_len, c->in_cap - c->in_len);
        if (n == 0) break;
        c->in_len += n;
        /* plain: a short read drained the socket; TLS: one record per read,
         * so read on until OpenSSL wants more from the socket */
        if (!c->ssl && c->in_len < c->in_cap) break;
    }
    parse(c);
}

static int dial(void) {
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) die("bad host %s (IPv4 only)", host);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0) die("socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("connect %s:%d: %s", host, port, strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

/* A TLS session over a connected (blocking) socket, handshake done; NULL in plain TCP. */
static SSL *tls_session(int fd) {
    if (!tls_ca) return NULL;
    SSL *ssl = SSL_new(tls_ctx);
    if (!ssl || !SSL_set_fd(ssl, fd)) die("SSL_new: %s", ssl_why());
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (tls_name) {
        if (!SSL_set_tlsext_host_name(ssl, tls_name) || !SSL_set1_host(ssl, tls_name))
            die("TLS name %s: %s", tls_name, ssl_why());
    }
    if (SSL_connect(ssl) != 1) die("TLS handshake with %s:%d: %s", host, port, ssl_why());
    return ssl;
}

static void tls_init(void) {
    if (!tls_ca) return;
    if (!(tls_ctx = SSL_CTX_new(TLS_client_method()))) die("SSL_CTX_new: %s", ssl_why());
    if (SSL_CTX_load_verify_locations(tls_ctx, tls_ca, NULL) != 1)
        die("--tls-ca %s: %s", tls_ca, ssl_why());
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
}

/* Blocking preload: set every key once, pipelined in chunks, check replies. */
static void do_preload(void) {
    int fd = dial();
    struct timeval tv = { .tv_sec = (long)STALL_S };  /* bounded blocking reads */
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    conn_t c = { .fd = fd, .out_cap = 1 << 16, .ssl = tls_session(fd) };
    c.out = malloc(c.out_cap);
    char buf[1 << 16];
    size_t have = 0;
    /* memcached 1.6.18's TLS stalls on one flight over ~16 KB (README, TLS) */
    const int chunk = tls_ca ? 50 : 200;
    for (long k = 0; k < keyspace; k += chunk) {
        long n = keyspace - k < chunk ? keyspace - k : chunk;
        c.out_len = 0;
        for (long i = 0; i < n; i++) add_set(&c, k + i);
        for (size_t off = 0; off < c.out_len;) {
            ssize_t w = io(&c, 1, c.out + off, c.out_len - off);
            if (w <= 0) die("preload write: %s", strerror(errno));
            off += w;
        }
        for (long got = 0; got < n;) {     /* each reply is one line */
            char *nl;
            while ((nl = memchr(buf, '\n', have)) != NULL && got < n) {
                size_t l = nl - buf + 1;
                if (l != 8 || memcmp(buf, "STORED\r\n", 8))
                    die("preload: unexpected reply: %.*s", (int)l, buf);
                memmove(buf, buf + l, have - l);
                have -= l;
                got++;
            }
            if (got == n) break;
            ssize_t r = io(&c, 0, buf + have, sizeof buf - have);
            if (r <= 0) die("preload read: %s", strerror(errno));
            have += r;
        }
    }
    free(c.out);
    if (c.ssl) SSL_free(c.ssl);
    close(fd);
}

/* utime+stime of a process in seconds, from /proc/<pid>/stat; -1 if gone. */
static double proc_cpu(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');   /* comm may contain spaces: skip past it */
    unsigned long ut, st;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / sysconf(_SC_CLK_TCK);
}

#define MAX_PIDS 64
static int cpu_pids[MAX_PIDS], n_cpu_pids;
static double cpu_start[MAX_PIDS];

static void usage(void) {
    fprintf(stderr,
        "usage: loadgen [options]\n"
        "  -H, --host ADDR       IPv4 address (127.0.0.1)\n"
        "  -p, --port N          port (11211)\n"
        "  -c, --conns N         connections (50)\n"
        "  -d, --depth N         pipeline depth per connection (1)\n"
        "  -w, --workload W      get90 | multiget10 | set1k (get90)\n"
        "  -k, --keyspace N      number of keys (10000)\n"
        "  -t, --duration S      measured seconds, max %.0f (5)\n"
        "  -n, --requests N      stop after N measured requests (0 = no limit)\n"
        "  -W, --warmup S        unmeasured warm-up seconds (1)\n"
        "      --no-preload      skip setting every key before the run\n"
        "  -s, --seed N          RNG seed\n"
        "  -C, --cpu-pids LIST   comma-separated pids whose CPU seconds (utime+stime)\n"
        "                        during the measured window are reported\n"
        "  -v, --verbose         print every unexpected reply\n"
        "      --tls-ca FILE     speak TLS, trusting the CA certificates in FILE\n"
        "      --tls-name NAME   the name (SNI, checked in the certificate)\n", MAX_DURATION);
    exit(1);
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"host", 1, 0, 'H'}, {"port", 1, 0, 'p'}, {"conns", 1, 0, 'c'},
        {"depth", 1, 0, 'd'}, {"workload", 1, 0, 'w'}, {"keyspace", 1, 0, 'k'},
        {"duration", 1, 0, 't'}, {"requests", 1, 0, 'n'}, {"warmup", 1, 0, 'W'},
        {"no-preload", 0, 0, 'P'}, {"seed", 1, 0, 's'}, {"verbose", 0, 0, 'v'}, {"cpu-pids", 1, 0, 'C'},
        {"tls-ca", 1, 0, 'A'}, {"tls-name", 1, 0, 'N'},
        {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int o;
    while ((o = getopt_long(argc, argv, "H:p:c:d:w:k:t:n:W:s:C:vh", opts, NULL)) != -1) {
        switch (o) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'c': nconns = atoi(optarg); break;
        case 'd': depth = atoi(optarg); break;
        case 'w': wl_name = optarg; break;
        case 'k': keyspace = atoi(optarg); break;
        case 't': duration = atof(optarg); break;
        case 'n': max_requests = atol(optarg); break;
        case 'W': warmup = atof(optarg); break;
        case 'P': preload = 0; break;
        case 's': rng = strtoull(optarg, NULL, 0) | 1; break;
        case 'v': verbose = 1; break;
        case 'A': tls_ca = optarg; break;
        case 'N': tls_name = optarg; break;
        case 'C':
            for (char *tok = strtok(optarg, ","); tok && n_cpu_pids < MAX_PIDS; tok = strtok(NULL, ","))
                cpu_pids[n_cpu_pids++] = atoi(tok);
            break;
        default: usage();
        }
    }
    if (!strcmp(wl_name, "get90")) workload = W_GET90;
    else if (!strcmp(wl_name, "multiget10")) workload = W_MULTIGET10;
    else if (!strcmp(wl_name, "set1k")) workload = W_SET1K;
    else usage();
    if (nconns < 1 || nconns > MAX_CONNS || depth < 1 || depth > MAX_DEPTH || keyspace < 1 ||
        duration <= 0 || duration > MAX_DURATION || warmup < 0 || warmup > MAX_DURATION)
        usage();
    value_len = workload == W_SET1K ? 1024 : 100;
    memset(value, 'x', sizeof value);
    if (!(hist = calloc(HIST_US, sizeof *hist))) die("out of memory");

    tls_init();
    if (preload) do_preload();

    epfd = epoll_create1(0);
    conn_t *conns = calloc(nconns, sizeof *conns);
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        c->fd = dial();
        c->ssl = tls_session(c->fd);    /* blocking handshake, then non-blocking records */
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        c->out_cap = c->in_cap = 1 << 16;
        c->out = malloc(c->out_cap);
        c->in = malloc(c->in_cap);
        if (!c->out || !c->in) die("out of memory");
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    }

    double t0 = now(), t_measure = t0 + warmup, t_end = t_measure + duration, cpu0 = 0;
    last_progress = t0;
    for (int i = 0; i < nconns; i++) send_batch(&conns[i]);
    struct epoll_event evs[256];
    while (running) {
        int n = epoll_wait(epfd, evs, 256, 10);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) die("socket error/hangup");
            if (evs[i].events & EPOLLOUT) flush_out(c);
            if (evs[i].events & EPOLLIN) on_readable(c);
        }
        double t = now();
        if (!measuring && t >= t_measure) {   /* warm-up over: start counting */
            measuring = 1;
            t_measure = t;
            t_end = t + duration;
            cpu0 = cpu_self();
            for (int i = 0; i < n_cpu_pids; i++) cpu_start[i] = proc_cpu(cpu_pids[i]);
        }
        if (t >= t_end) running = 0;
        if (t - last_progress > STALL_S) die("no reply for %.0f s (server stalled?)", STALL_S);
    }
    double elapsed = now() - t_measure, cpu = cpu_self() - cpu0;
    char cpus[MAX_PIDS * 24] = "";
    for (int i = 0, off = 0; i < n_cpu_pids; i++) {
        double end = proc_cpu(cpu_pids[i]);
        double d = end < 0 || cpu_start[i] < 0 ? -1 : end - cpu_start[i];
        off += snprintf(cpus + off, sizeof cpus - off, "%s%.2f", i ? ", " : "", d);
    }

    /* percentiles from the 1 us histogram (overflow counts as > 1 s) */
    long samples = n_overflow, p50 = HIST_US, p99 = HIST_US, p999 = HIST_US, acc = 0;
    for (long i = 0; i < HIST_US; i++) samples += hist[i];
    for (long i = 0; i < HIST_US && p999 == HIST_US; i++) {
        acc += hist[i];
        if (p50 == HIST_US && acc * 100 >= samples * 50) p50 = i;
        if (p99 == HIST_US && acc * 100 >= samples * 99) p99 = i;
        if (p999 == HIST_US && acc * 1000 >= samples * 999) p999 = i;
    }
    printf("{\"workload\": \"%s\", \"conns\": %d, \"depth\": %d, \"requests\": %ld, "
           "\"elapsed_s\": %.3f, \"ops_per_s\": %.1f, \"p50_us\": %ld, \"p99_us\": %ld, "
           "\"p999_us\": %ld, \"max_us\": %.0f, \"samples\": %ld, \"errors\": %ld, "
           "\"hit_ratio\": %.3f, \"loadgen_cpu\": %.3f, \"cpu_s\": [%s]}\n",
           wl_name, nconns, depth, n_done, elapsed, n_done / elapsed, p50, p99, p999,
           max_lat_us, samples, n_errors, n_keys ? (double)n_hits / n_keys : 0.0, cpu / elapsed, cpus);
    fflush(stdout);
    if (n_errors) {
        fprintf(stderr, "loadgen: %ld ERROR/CLIENT_ERROR/SERVER_ERROR replies\n", n_errors);
        return 3;
    }
    return 0;
}
