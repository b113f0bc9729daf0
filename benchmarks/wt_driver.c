/* wt_driver: the load driver of benchmarks/webtorrent_load.py, in C.
 *
 *     wt_driver HOST PORT PEERS SWARMS OFFERS WARMUP_S DURATION_S TIMEOUT_S RATE
 *
 * One thread, one epoll loop, PEERS websocket clients of a WebTorrent tracker at
 * HOST:PORT; the workload is the Python driver's (webtorrent_load.py, class Peer and
 * run_one), so the two drivers measure the same thing and this one does it for a
 * fraction of the CPU:
 *
 * 1. connect: at most MAX_CONNECTING TCP connects + websocket handshakes at a time
 *    (the listen backlog); a 101 response is enough (Sec-WebSocket-Accept is not
 *    checked).
 * 2. started: every peer announces (event "started", no offers) so that the swarms
 *    are full; 1 s for the server to take them in (replies ignored). Prints "ready".
 * 3. offers: closed loop (RATE 0): every peer announces OFFERS offers and, when all
 *    are answered or TIMEOUT_S has passed, the next ones. Open loop (RATE > 0):
 *    announces from random peers on a fixed schedule, RATE offers per second, latency
 *    counted from the scheduled time (a stall of this driver counts). Every peer
 *    answers each offer it gets at once. Answers are counted, and their latencies
 *    (from the announce to the answer) kept, from WARMUP_S after the start of this
 *    phase for DURATION_S: "measuring" is printed at the start of that interval and
 *    "done" at its end (the benchmark samples the server's CPU then), then one JSON
 *    line: offers_per_s, p50_ms, p99_ms, answered (in the interval), timeouts
 *    (closed-loop announces given up), failures (messages with a "failure reason"),
 *    errors (connections failed or lost), connected, driver_cpu (this process's CPU
 *    share over the interval), offers_in and answers_in (offers and answers received
 *    over the whole run).
 *
 * Peer i has peer_id "-LP0001-" + i (12 digits) and is in swarm i % SWARMS, info_hash
 * NUL-padded "ih" + (i % SWARMS) (the Python binary()). Offer ids are NUL-padded "o" +
 * a 12-digit sequence number unique over the run; the number, read back from the
 * answer's offer_id, indexes a ring of the offers in flight (no hash of the text).
 *
 * Client frames are masked with the key 0 (allowed, and masking is then a no-op);
 * writes are buffered per connection and flushed once per loop turn (EPOLLOUT while a
 * socket is full). Messages are scanned, not parsed: a forwarded offer is recognised
 * by its "offer" key, an answer by its "answer" key, and peer_id / offer_id are copied
 * as raw JSON string text. Only libc; an alarm() ends a run that overstays.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
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

#define MAX_CONNECTING 100          /* connects + handshakes in flight */
#define CONNECT_LIMIT_S 60.0        /* for all connections; then go on without the rest */
#define STARTED_WAIT_S 1.0          /* after the "started" announces */
#define READ_SIZE (256 * 1024)      /* one recv() */
#define MAX_MESSAGE (16 << 20)      /* a longer frame is a protocol error */
#define MAX_EVENTS 512
#define MAX_ERROR_LINES 5           /* reasons printed to stderr */

/* The Python SDP constant. */
static const char SDP[] =
    "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=application 9 UDP/DTLS/SCTP "
    "webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n"
    "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n"
    "a=fingerprint:sha-256 "
    "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:"
    "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB\r\na=setup:actpass\r\n"
    "a=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";

enum state { IDLE, CONNECTING, HANDSHAKE, OPEN, CLOSED };
enum phase { PH_CONNECT, PH_STARTED, PH_RUN };

typedef struct {
    int fd;
    enum state state;
    int dirty;                 /* in the flush list */
    int polling_out;           /* EPOLLOUT registered: the socket was full */
    char *rbuf;                /* bytes not yet a whole frame (or the handshake) */
    size_t rlen, rcap;
    char *wbuf;                /* bytes not yet sent, from woff */
    size_t woff, wlen, wcap;
    char *frag;                /* a fragmented message so far */
    size_t flen, fcap;
    int pending;               /* offers of the current announce not yet answered */
    uint64_t first_seq;        /* ... the first of them */
    double sent_at;            /* ... when it was sent (closed loop) */
    char pid[32];              /* peer_id as JSON text, quotes included */
    char ih[64];               /* info_hash as JSON text */
    size_t pid_len, ih_len;
} Conn;

typedef struct {               /* an offer in flight, at ring[seq & ring_mask] */
    uint64_t seq;              /* 0: free */
    double sent;
    int conn;
} Offer;

/* Parameters. */
static const char *host, *port;
static int npeers, nswarms, noffers;
static double warmup, duration, timeout_s, rate;

static Conn *conns;
static int ep;
static struct sockaddr_storage addr;
static socklen_t addr_len;
static char *gbuf;                       /* recv() buffer shared by the connections */
static char *scratch;                    /* an outgoing message being built */
static size_t scratch_cap;
static char *sdp_json;                   /* SDP as a JSON string */
static size_t sdp_json_len;
static int *dirty;                       /* connections with bytes to write */
static int ndirty;
static Offer *ring;
static uint64_t ring_mask, next_seq = 1;

/* State and counters. */
static enum phase phase = PH_CONNECT;
static int connecting, settled, connected;   /* settled: open or failed */
static int measuring, stopping;
static long errors, answered, timeouts, failures;
static long offers_in, answers_in;        /* messages received, whole run */
static double *lat;
static size_t nlat, lat_cap;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("wt_driver: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (p == NULL)
        die("out of memory");
    return p;
}

/* A JSON string (quotes included) of n bytes at s, written at out; its length.
 * Escapes as Python's json.dumps does (out needs 6 * n + 2 bytes). */
static size_t json_string(char *out, const char *s, size_t n)
{
    char *o = out;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        switch (ch) {
        case '"': *o++ = '\\'; *o++ = '"'; break;
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case '\r': *o++ = '\\'; *o++ = 'r'; break;
        case '\t': *o++ = '\\'; *o++ = 't'; break;
        default:
            if (ch < 0x20)
                o += sprintf(o, "\\u%04x", ch);
            else
                *o++ = (char)ch;
        }
    }
    *o++ = '"';
    return (size_t)(o - out);
}

/* The Python binary(n, prefix): prefix + n in 12 digits, last 20 characters,
 * NUL-padded on the left to 20. */
static void binary_id(char out[20], uint64_t n, const char *prefix)
{
    char s[64];
    int len = snprintf(s, sizeof s, "%s%012llu", prefix, (unsigned long long)n);
    const char *tail = len > 20 ? s + len - 20 : s;
    int tlen = len > 20 ? 20 : len;
    memset(out, 0, 20);
    memcpy(out + 20 - tlen, tail, (size_t)tlen);
}

/* ---- connections and writes ---- */

static void error_line(Conn *c, const char *why)
{
    if (errors <= MAX_ERROR_LINES)
        fprintf(stderr, "wt_driver: peer %ld: %s%s\n", (long)(c - conns), why,
                errors == MAX_ERROR_LINES ? " (no more of these)" : "");
}

/* Closes the connection; an error unless the run is over. */
static void conn_fail(Conn *c, const char *why)
{
    if (c->state == CLOSED || c->state == IDLE)
        return;
    if (c->state == CONNECTING || c->state == HANDSHAKE) {
        connecting--;
        settled++;
    }
    if (!stopping) {
        errors++;
        error_line(c, why);
    }
    close(c->fd);
    c->fd = -1;
    c->state = CLOSED;
    c->rlen = c->woff = c->wlen = c->flen = 0;
    c->pending = 0;
}

static void poll_out(Conn *c, int on)
{
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0),
                             .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->polling_out = on;
}

static void out_append(Conn *c, const void *p, size_t n)
{
    if (c->wlen + n > c->wcap && c->woff > 0) {
        memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
        c->wlen -= c->woff;
        c->woff = 0;
    }
    if (c->wlen + n > c->wcap) {
        size_t cap = c->wcap ? c->wcap : 16384;
        while (cap < c->wlen + n)
            cap *= 2;
        c->wbuf = xrealloc(c->wbuf, cap);
        c->wcap = cap;
    }
    memcpy(c->wbuf + c->wlen, p, n);
    c->wlen += n;
    if (!c->dirty) {
        c->dirty = 1;
        dirty[ndirty++] = (int)(c - conns);
    }
}

static void flush(Conn *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->polling_out)
                poll_out(c, 1);
            return;
        } else {
            conn_fail(c, n < 0 ? strerror(errno) : "send returned 0");
            return;
        }
    }
    c->woff = c->wlen = 0;
    if (c->polling_out)
        poll_out(c, 0);
}

/* Writes what the loop turn queued (one send() per connection per turn). */
static void flush_dirty(void)
{
    for (int i = 0; i < ndirty; i++) {
        Conn *c = &conns[dirty[i]];
        c->dirty = 0;
        if (c->state != CLOSED && !c->polling_out)
            flush(c);
    }
    ndirty = 0;
}

/* Queues one frame: FIN, opcode op, masked with the key 0 (the payload as is). */
static void ws_send(Conn *c, int op, const char *p, size_t n)
{
    unsigned char h[14];
    size_t hl = 0;
    h[hl++] = (unsigned char)(0x80 | op);
    if (n < 126) {
        h[hl++] = (unsigned char)(0x80 | n);
    } else if (n < 65536) {
        h[hl++] = 0x80 | 126;
        h[hl++] = (unsigned char)(n >> 8);
        h[hl++] = (unsigned char)n;
    } else {
        h[hl++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            h[hl++] = (unsigned char)((uint64_t)n >> (8 * i));
    }
    memset(h + hl, 0, 4);
    hl += 4;
    out_append(c, h, hl);
    out_append(c, p, n);
}

static void conn_start(Conn *c)
{
    c->fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket: %s (raise the fd limit?)", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = CONNECTING;
    connecting++;
    if (connect(c->fd, (struct sockaddr *)&addr, addr_len) < 0 && errno != EINPROGRESS) {
        conn_fail(c, strerror(errno));
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->polling_out = 1;
}

/* The TCP connect is done (writable): send the websocket handshake. */
static void conn_connected(Conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        conn_fail(c, strerror(err));
        return;
    }
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET / HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n", host, port);
    c->state = HANDSHAKE;
    out_append(c, req, (size_t)n);
}

/* ---- offers and answers ---- */

/* Queues an announce of noffers offers from c, sent (for the latency) at `at`. */
static void send_offers(Conn *c, double at)
{
    char *o = scratch;
#define PUT(s) (memcpy(o, s, sizeof(s) - 1), o += sizeof(s) - 1)
#define PUTN(p, n) (memcpy(o, p, n), o += (n))
    PUT("{\"action\":\"announce\",\"info_hash\":");
    PUTN(c->ih, c->ih_len);
    PUT(",\"peer_id\":");
    PUTN(c->pid, c->pid_len);
    o += sprintf(o, ",\"numwant\":%d", noffers);
    PUT(",\"uploaded\":0,\"downloaded\":0,\"left\":1,\"offers\":[");
    c->first_seq = next_seq;
    for (int k = 0; k < noffers; k++) {
        uint64_t seq = next_seq++;
        Offer *slot = &ring[seq & ring_mask];
        slot->seq = seq;   /* an offer still unanswered after 2^ring_bits more is lost */
        slot->sent = at;
        slot->conn = (int)(c - conns);
        char id[20];
        binary_id(id, seq, "o");
        if (k)
            *o++ = ',';
        PUT("{\"offer\":{\"type\":\"offer\",\"sdp\":");
        PUTN(sdp_json, sdp_json_len);
        PUT("},\"offer_id\":");
        o += json_string(o, id, 20);
        *o++ = '}';
    }
    PUT("]}");
    c->pending = noffers;
    c->sent_at = at;
    ws_send(c, 1, scratch, (size_t)(o - scratch));
}

/* Closed loop: c's announce is given up; its offers are forgotten. */
static void drop_offers(Conn *c)
{
    for (int k = 0; k < noffers; k++) {
        uint64_t seq = c->first_seq + (uint64_t)k;
        Offer *slot = &ring[seq & ring_mask];
        if (slot->seq == seq)
            slot->seq = 0;
    }
    c->pending = 0;
}

/* The value of key (a JSON string) in the message: its raw text, quotes included. */
static int find_string(const char *p, size_t n, const char *key, const char **val,
                       size_t *vlen)
{
    size_t klen = strlen(key);
    const char *end = p + n, *s = p;
    while ((s = memmem(s, (size_t)(end - s), key, klen)) != NULL) {
        const char *q = s + klen;
        s = q;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'))
            q++;
        if (q >= end || *q != ':')
            continue;   /* the text as a value ("type":"offer"), not a key */
        q++;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'))
            q++;
        if (val == NULL)
            return 1;   /* only whether the key is there */
        if (q >= end || *q != '"')
            return 0;
        const char *r = q + 1;
        while (r < end && *r != '"')
            r += *r == '\\' ? 2 : 1;
        if (r >= end)
            return 0;
        *val = q;
        *vlen = (size_t)(r + 1 - q);
        return 1;
    }
    return 0;
}

static void record_latency(double ms)
{
    if (nlat == lat_cap) {
        lat_cap = lat_cap ? 2 * lat_cap : 65536;
        lat = xrealloc(lat, lat_cap * sizeof *lat);
    }
    lat[nlat++] = ms;
}

/* The sequence number in an offer_id's JSON text (...o + 12 digits + quote); 0: not
 * one of ours. */
static uint64_t offer_seq(const char *id, size_t n)
{
    if (n < 15 || id[n - 14] != 'o')
        return 0;
    uint64_t seq = 0;
    for (size_t i = n - 13; i < n - 1; i++) {
        if (id[i] < '0' || id[i] > '9')
            return 0;
        seq = seq * 10 + (uint64_t)(id[i] - '0');
    }
    return seq;
}

static void on_message(Conn *c, const char *p, size_t n)
{
    const char *from, *id;
    size_t from_len, id_len;
    if (find_string(p, n, "\"offer\"", NULL, NULL)) {
        /* An offer for c: answer it at once. */
        offers_in++;
        if (!find_string(p, n, "\"peer_id\"", &from, &from_len)
            || !find_string(p, n, "\"offer_id\"", &id, &id_len)
            || from_len > 1024 || id_len > 1024)
            return;
        char *o = scratch;
        PUT("{\"action\":\"announce\",\"info_hash\":");
        PUTN(c->ih, c->ih_len);
        PUT(",\"peer_id\":");
        PUTN(c->pid, c->pid_len);
        PUT(",\"to_peer_id\":");
        PUTN(from, from_len);
        PUT(",\"offer_id\":");
        PUTN(id, id_len);
        PUT(",\"answer\":{\"type\":\"answer\",\"sdp\":");
        PUTN(sdp_json, sdp_json_len);
        PUT("}}");
        ws_send(c, 1, scratch, (size_t)(o - scratch));
    } else if (find_string(p, n, "\"answer\"", NULL, NULL)) {
        /* An answer to one of c's offers. */
        answers_in++;
        if (!find_string(p, n, "\"offer_id\"", &id, &id_len))
            return;
        uint64_t seq = offer_seq(id, id_len);
        Offer *slot = &ring[seq & ring_mask];
        if (seq == 0 || slot->seq != seq)
            return;   /* given up, or answered already */
        slot->seq = 0;
        if (measuring) {
            record_latency((now_s() - slot->sent) * 1e3);
            answered++;
        }
        Conn *offerer = &conns[slot->conn];
        if (--offerer->pending == 0 && rate == 0 && phase == PH_RUN
            && offerer->state == OPEN)
            send_offers(offerer, now_s());   /* closed loop: the next announce */
    } else if (find_string(p, n, "\"failure reason\"", NULL, NULL)) {
        /* A request refused: counted, the first few shown. */
        if (++failures <= MAX_ERROR_LINES)
            fprintf(stderr, "wt_driver: peer %ld: %.*s\n", (long)(c - conns),
                    (int)(n < 300 ? n : 300), p);
    }
    /* Anything else (announce replies, ...) is ignored. */
}
#undef PUT
#undef PUTN

/* ---- reads ---- */

static void on_frame(Conn *c, int fin, int op, const char *p, size_t n)
{
    if (op >= 8) {                                /* control */
        if (op == 8) {
            conn_fail(c, "closed by the server");
        } else if (op == 9) {
            ws_send(c, 10, p, n);                 /* ping: pong */
        }
        return;
    }
    if (op == 0 || !fin) {                        /* a fragment */
        if (op != 0)
            c->flen = 0;
        if (c->flen + n > MAX_MESSAGE) {
            conn_fail(c, "message too long");
            return;
        }
        if (c->flen + n > c->fcap) {
            c->fcap = (c->flen + n) * 2;
            c->frag = xrealloc(c->frag, c->fcap);
        }
        memcpy(c->frag + c->flen, p, n);
        c->flen += n;
        if (fin) {
            on_message(c, c->frag, c->flen);
            c->flen = 0;
        }
        return;
    }
    on_message(c, p, n);
}

/* Handles the whole frames in buf; the bytes used. */
static size_t parse_frames(Conn *c, char *buf, size_t len)
{
    size_t off = 0;
    while (c->state == OPEN && len - off >= 2) {
        unsigned char *b = (unsigned char *)buf + off;
        uint64_t plen = b[1] & 0x7f;
        size_t hl = 2;
        if (plen == 126) {
            if (len - off < 4)
                break;
            plen = (uint64_t)b[2] << 8 | b[3];
            hl = 4;
        } else if (plen == 127) {
            if (len - off < 10)
                break;
            plen = 0;
            for (int i = 2; i < 10; i++)
                plen = plen << 8 | b[i];
            hl = 10;
        }
        int masked = b[1] & 0x80;
        if (masked)
            hl += 4;
        if (plen > MAX_MESSAGE) {
            conn_fail(c, "frame too long");
            break;
        }
        if (len - off < hl + plen)
            break;
        char *p = buf + off + hl;
        if (masked) {                              /* servers do not; but be correct */
            for (uint64_t i = 0; i < plen; i++)
                p[i] ^= (char)b[hl - 4 + (i & 3)];
        }
        on_frame(c, b[0] & 0x80, b[0] & 0x0f, p, (size_t)plen);
        off += hl + (size_t)plen;
    }
    return off;
}

static void rbuf_reserve(Conn *c, size_t more)
{
    if (c->rlen + more > c->rcap) {
        size_t cap = c->rcap ? c->rcap : 16384;
        while (cap < c->rlen + more)
            cap *= 2;
        c->rbuf = xrealloc(c->rbuf, cap);
        c->rcap = cap;
    }
}

/* The server's response to the handshake, in rbuf so far. */
static void on_handshake(Conn *c)
{
    char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
    if (end == NULL) {
        if (c->rlen > 16384)
            conn_fail(c, "handshake response too long");
        return;
    }
    if (c->rlen < 12 || memcmp(c->rbuf + 8, " 101", 4) != 0) {
        conn_fail(c, "handshake refused");
        return;
    }
    c->state = OPEN;
    connecting--;
    settled++;
    connected++;
    size_t head = (size_t)(end + 4 - c->rbuf);
    memmove(c->rbuf, c->rbuf + head, c->rlen - head);   /* frames right behind it */
    c->rlen -= head;
}

/* One recv(): straight into the shared buffer when nothing is left over (the usual
 * case), else after the leftover in the connection's own buffer. */
static void on_readable(Conn *c)
{
    char *buf;
    size_t have;
    if (c->state == OPEN && c->rlen == 0) {
        buf = gbuf;
        have = 0;
    } else {
        rbuf_reserve(c, 65536);
        buf = c->rbuf;
        have = c->rlen;
    }
    size_t room = buf == gbuf ? READ_SIZE : c->rcap - c->rlen;
    ssize_t n = recv(c->fd, buf + have, room, 0);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_fail(c, strerror(errno));
        return;
    }
    if (n == 0) {
        conn_fail(c, "closed by the server (EOF)");
        return;
    }
    if (buf == gbuf) {
        size_t used = parse_frames(c, gbuf, (size_t)n);
        if (c->state == OPEN && used < (size_t)n) {      /* keep a partial frame */
            rbuf_reserve(c, (size_t)n - used);
            memcpy(c->rbuf, gbuf + used, (size_t)n - used);
            c->rlen = (size_t)n - used;
        }
        return;
    }
    c->rlen += (size_t)n;
    if (c->state == HANDSHAKE)
        on_handshake(c);
    if (c->state == OPEN && c->rlen > 0) {
        size_t used = parse_frames(c, c->rbuf, c->rlen);
        if (c->state == OPEN) {
            memmove(c->rbuf, c->rbuf + used, c->rlen - used);
            c->rlen -= used;
        }
    }
}

static void on_event(Conn *c, uint32_t events)
{
    if (c->state == CONNECTING) {
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
            conn_connected(c);
        if (c->state == HANDSHAKE)
            flush(c);
        return;
    }
    if (c->state != CLOSED && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        on_readable(c);
    if (c->state != CLOSED && (events & EPOLLOUT))
        flush(c);
}

/* ---- the run ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void setup(void)
{
    struct rlimit rl;   /* a socket per peer: the hard limit */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)npeers + 16 > rl.rlim_cur)
            die("%d peers need more than the fd limit (%llu)", npeers,
                (unsigned long long)rl.rlim_cur);
    }
    signal(SIGPIPE, SIG_IGN);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0)
        die("%s:%s: %s", host, port, gai_strerror(rc));
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    addr_len = ai->ai_addrlen;
    freeaddrinfo(ai);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    gbuf = xrealloc(NULL, READ_SIZE);
    sdp_json = xrealloc(NULL, 6 * sizeof SDP + 2);
    sdp_json_len = json_string(sdp_json, SDP, sizeof SDP - 1);
    scratch_cap = 8192 + (size_t)noffers * (sdp_json_len + 256);
    if (scratch_cap < 2 * sdp_json_len + 8192)
        scratch_cap = 2 * sdp_json_len + 8192;
    scratch = xrealloc(NULL, scratch_cap);
    dirty = xrealloc(NULL, (size_t)npeers * sizeof *dirty);

    /* Ring of the offers in flight: at least 4x what the closed loop has out, and at
     * least 2^20 (the open loop's answers, 50 s of them at 20,000 offers/s). */
    uint64_t size = 1 << 20;
    while (size < (uint64_t)npeers * (uint64_t)noffers * 4)
        size *= 2;
    ring = calloc(size, sizeof *ring);
    if (ring == NULL)
        die("out of memory");
    ring_mask = size - 1;

    conns = calloc((size_t)npeers, sizeof *conns);
    if (conns == NULL)
        die("out of memory");
    for (int i = 0; i < npeers; i++) {
        Conn *c = &conns[i];
        char id[20];
        c->fd = -1;
        binary_id(id, (uint64_t)i, "-LP0001-");
        c->pid_len = json_string(c->pid, id, 20);
        binary_id(id, (uint64_t)(i % nswarms), "ih");
        c->ih_len = json_string(c->ih, id, 20);
    }
}

static void say(const char *word)
{
    printf("%s\n", word);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 10) {
        fprintf(stderr, "usage: wt_driver HOST PORT PEERS SWARMS OFFERS WARMUP_S "
                        "DURATION_S TIMEOUT_S RATE\n");
        return 2;
    }
    host = argv[1];
    port = argv[2];
    npeers = atoi(argv[3]);
    nswarms = atoi(argv[4]);
    noffers = atoi(argv[5]);
    warmup = atof(argv[6]);
    duration = atof(argv[7]);
    timeout_s = atof(argv[8]);
    rate = atof(argv[9]);
    if (npeers < 1 || nswarms < 1 || noffers < 1 || duration <= 0 || timeout_s <= 0
        || rate < 0)
        die("bad arguments");
    setup();
    /* Never hang: the whole run, with slack, or SIGALRM ends the process. */
    alarm((unsigned)(CONNECT_LIMIT_S + STARTED_WAIT_S + warmup + duration + 30));

    struct epoll_event evs[MAX_EVENTS];
    double t = now_s();
    double connect_deadline = t + CONNECT_LIMIT_S, started_until = 0;
    double t_run = 0, t_meas0 = 0, t_meas1 = 0, next_scan = 0, next_at = 0;
    double real0 = 0, cpu0 = 0, real = 0, cpu = 0;
    double interval = rate > 0 ? noffers / rate : 0;
    double scan_every = timeout_s / 4 < 0.05 ? timeout_s / 4 : 0.05;
    uint64_t rng = 0x9e3779b97f4a7c15ULL, scheduled = 0;
    int next_conn = 0;

    for (;;) {
        double now = now_s(), wake = now + 1.0;
        if (phase == PH_CONNECT) {
            while (connecting < MAX_CONNECTING && next_conn < npeers)
                conn_start(&conns[next_conn++]);
            if (settled == npeers || now >= connect_deadline) {
                for (int i = 0; i < npeers; i++) {   /* not connected by now: failed */
                    if (conns[i].state == IDLE) {
                        errors++;
                        conns[i].state = CLOSED;
                    }
                    if (conns[i].state == CONNECTING || conns[i].state == HANDSHAKE)
                        conn_fail(&conns[i], "connect timed out");
                    if (conns[i].state != OPEN)
                        continue;
                    char msg[256];
                    int n = snprintf(msg, sizeof msg,
                                     "{\"action\":\"announce\",\"info_hash\":%s,"
                                     "\"peer_id\":%s,\"numwant\":0,\"left\":1,"
                                     "\"event\":\"started\",\"uploaded\":0,"
                                     "\"downloaded\":0}", conns[i].ih, conns[i].pid);
                    ws_send(&conns[i], 1, msg, (size_t)n);
                }
                phase = PH_STARTED;
                started_until = connected ? now + STARTED_WAIT_S : now;
            } else if (connect_deadline < wake) {
                wake = connect_deadline;
            }
        }
        if (phase == PH_STARTED) {
            if (now >= started_until) {
                say("ready");
                phase = PH_RUN;
                t_run = now;
                t_meas0 = t_run + warmup;
                t_meas1 = t_meas0 + duration;
                next_scan = now + scan_every;
                next_at = now;
                if (rate == 0)
                    for (int i = 0; i < npeers; i++)
                        if (conns[i].state == OPEN)
                            send_offers(&conns[i], now);
            } else {
                wake = started_until;
            }
        }
        if (phase == PH_RUN) {
            if (!measuring && now >= t_meas0) {
                say("measuring");
                measuring = 1;
                real0 = now;
                cpu0 = cpu_s();
            }
            if (now >= t_meas1 || connected == 0) {   /* (nobody to measure) */
                real = now - real0;
                cpu = cpu_s() - cpu0;
                measuring = 0;
                stopping = 1;
                say("done");
                break;
            }
            if (rate == 0 && now >= next_scan) {  /* closed loop: announces given up */
                for (int i = 0; i < npeers; i++) {
                    Conn *c = &conns[i];
                    if (c->state == OPEN && c->pending > 0 && now - c->sent_at >= timeout_s) {
                        timeouts++;
                        drop_offers(c);
                        send_offers(c, now);
                    }
                }
                next_scan = now + scan_every;
            }
            while (rate > 0 && next_at <= now) {  /* open loop: what is due */
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                for (int k = 0, i = (int)(rng % (uint64_t)npeers); k < npeers;
                     k++, i = (i + 1) % npeers) {
                    if (conns[i].state == OPEN) {
                        send_offers(&conns[i], next_at);
                        break;
                    }
                }
                scheduled++;
                next_at = t_run + scheduled * interval;
            }
            wake = t_meas0 > now && t_meas0 < t_meas1 ? t_meas0 : t_meas1;
            if (rate == 0 && next_scan < wake)
                wake = next_scan;
            if (rate > 0 && next_at < wake)
                wake = next_at;
        }
        flush_dirty();

        double dt = wake - now_s();
        if (dt < 0)
            dt = 0;
        struct timespec ts = {.tv_sec = (time_t)dt,
                              .tv_nsec = (long)((dt - (double)(time_t)dt) * 1e9)};
        int n = epoll_pwait2(ep, evs, MAX_EVENTS, &ts, NULL);
        if (n < 0 && errno != EINTR)
            die("epoll_pwait2: %s", strerror(errno));
        for (int i = 0; i < n; i++)
            on_event(&conns[evs[i].data.u32], evs[i].events);
        flush_dirty();
    }

    qsort(lat, nlat, sizeof *lat, cmp_double);
    char p50[32] = "null", p99[32] = "null";
    if (nlat) {
        snprintf(p50, sizeof p50, "%.3f", lat[nlat / 2]);
        snprintf(p99, sizeof p99, "%.3f", lat[(size_t)(nlat * 0.99)]);
    }
    printf("{\"offers_per_s\":%.1f,\"p50_ms\":%s,\"p99_ms\":%s,\"answered\":%ld,"
           "\"timeouts\":%ld,\"failures\":%ld,\"errors\":%ld,\"connected\":%d,"
           "\"driver_cpu\":%.3f,\"offers_in\":%ld,\"answers_in\":%ld}\n",
           real > 0 ? answered / real : 0.0, p50, p99, answered, timeouts, failures, errors,
           connected, real > 0 ? cpu / real : 0.0, offers_in, answers_in);
    fflush(stdout);

    /* A close frame for each connection (one try), then close. */
    for (int i = 0; i < npeers; i++) {
        Conn *c = &conns[i];
        if (c->state == OPEN) {
            unsigned char fr[8] = {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8};   /* 1000 */
            if (c->woff == c->wlen)
                (void)!send(c->fd, fr, sizeof fr, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (c->fd >= 0)
            close(c->fd);
    }
    return 0;
}
