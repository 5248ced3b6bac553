#include "access_log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "buf.h"
#include "clock.h"
#include "json_escape.h"
#include "log.h"
#include "numfmt.h"

#define BATCH_MAX 65536          /* a worker's buffer: one write(2) when full */
#define APP_MEMBERS_MAX 4096     /* what the runtime may add to a line */

/* ---- the file: process-wide, its descriptor number constant ---------- */

static int log_fd = -1;
static const char *log_path;     /* NULL: stdout */
/* Largest write that stays whole among other writers: any size for a
 * regular file opened O_APPEND, PIPE_BUF for a pipe. */
static size_t batch_limit = BATCH_MAX;
static atomic_uint_fast64_t lost;
static atomic_bool lost_reported;

static const char *const end_names[] = {
    [STREAM_END_UNKNOWN] = "unknown",
    [STREAM_END_CLIENT_GONE] = "client_gone",
    [STREAM_END_SLOW_CONSUMER] = "slow_consumer",
    [STREAM_END_SEND_TIMEOUT] = "send_timeout",
    [STREAM_END_TOKEN_EXPIRED] = "token_expired",
    [STREAM_END_SHUTDOWN] = "shutdown",
    [STREAM_END_SCRIPT_ERROR] = "script_error",
    [STREAM_END_CLOSED_BY_APP] = "closed_by_app",
    [STREAM_END_ADMIN_DISCONNECT] = "admin_disconnect",
    [STREAM_END_SERVER_ERROR] = "server_error",
};
#define NEND (sizeof end_names / sizeof end_names[0])

const char *access_log_end_name(enum stream_end why)
{
    return (size_t)why < NEND ? end_names[why] : "unknown";
}

int access_log_end_parse(const char *name)
{
    for (size_t i = 1; i < NEND; i++)
        if (strcmp(name, end_names[i]) == 0)
            return (int)i;
    return -1;
}

static int open_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        log_error("access log %s: %s", path, strerror(errno));
    return fd;
}

static void set_batch_limit(void)
{
    struct stat st;
    if (fstat(log_fd, &st) == 0 && S_ISREG(st.st_mode))
        batch_limit = BATCH_MAX;
    else
        batch_limit = PIPE_BUF;
}

int access_log_open(const char *path)
{
    if (strcmp(path, "-") == 0) {
        log_fd = STDOUT_FILENO;
        log_path = NULL;
    } else {
        log_fd = open_file(path);
        if (log_fd < 0)
            return -1;
        log_path = path;
    }
    set_batch_limit();
    return 0;
}

bool access_log_enabled(void)
{
    return log_fd >= 0;
}

void access_log_reopen(void)
{
    if (log_fd < 0)
        return;
    if (!log_path) {
        log_info("SIGUSR1: the access log goes to stdout; nothing to reopen");
        return;
    }
    int fd = open_file(log_path);
    if (fd < 0)
        return;   /* keep writing where we were */
    /* The same number: a worker's write lands in the old or the new file,
     * never on a closed or reused descriptor. */
    if (dup3(fd, log_fd, O_CLOEXEC) < 0)
        log_error("access log %s: dup3: %s", log_path, strerror(errno));
    else
        log_info("SIGUSR1: reopened the access log %s", log_path);
    if (close(fd) < 0)
        log_warn("close: %s", strerror(errno));
}

void access_log_close(void)
{
    if (log_fd > STDERR_FILENO && close(log_fd) < 0)
        log_warn("access log close: %s", strerror(errno));
    log_fd = -1;
}

uint64_t access_log_lost(void)
{
    return atomic_load(&lost);
}

/* ---- a worker's buffer ----------------------------------------------- */

/* Per thread: each worker buffers its own lines. (Heap, not a large TLS
 * array: the test kit loads the core as a shared object.) */
static _Thread_local char *pending;
static _Thread_local size_t pending_len;
static _Thread_local ev_timer flush_timer;
static _Thread_local struct ev_loop *flush_loop;
static _Thread_local struct buf line;   /* reused for every line */

static size_t count_lines(const char *p, size_t n)
{
    size_t k = 0;
    for (const char *q = p; (q = memchr(q, '\n', (size_t)(p + n - q))); q++)
        k++;
    return k;
}

static void lose(const char *p, size_t n, const char *why)
{
    atomic_fetch_add(&lost, count_lines(p, n));
    if (!atomic_exchange(&lost_reported, true))
        log_error("access log: write failed (%s); lines are being lost "
                  "(reported once; counted)", why);
}

/* Writes [p, p+n) of whole lines, in batches of at most batch_limit bytes
 * ending at a line's end: one write(2) each, no retry but for EINTR. */
static void write_lines(const char *p, size_t n)
{
    while (n) {
        size_t take = n;
        if (take > batch_limit) {
            const char *nl = memrchr(p, '\n', batch_limit);
            take = nl ? (size_t)(nl - p) + 1 : batch_limit;
        }
        ssize_t w = write(log_fd, p, take);
        if (w < 0 && errno == EINTR)
            w = write(log_fd, p, take);
        if (w < 0) {
            lose(p, n, strerror(errno));
            return;
        }
        if ((size_t)w < take) {   /* disk full: the rest of this batch is lost */
            lose(p + w, n - (size_t)w, "short write");
            return;
        }
        p += take;
        n -= take;
    }
}

static void flush_pending(void)
{
    if (pending_len)
        write_lines(pending, pending_len);
    pending_len = 0;
}

static void on_flush(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop; (void)t; (void)revents;
    flush_pending();
}

void access_log_thread_end(void)
{
    if (flush_loop)
        ev_timer_stop(flush_loop, &flush_timer);
    flush_loop = NULL;
    flush_pending();
    free(pending);
    pending = NULL;
    buf_free(&line);
}

/* Queues one line; a zero timer writes the batch in the next loop turn. */
static void append(struct ev_loop *loop, const char *p, size_t n)
{
    if (!pending) {
        pending = malloc(BATCH_MAX);
        if (!pending) {
            lose(p, n, "out of memory");
            return;
        }
    }
    if (pending_len + n > BATCH_MAX)
        flush_pending();
    if (n > BATCH_MAX) {   /* cannot happen with bounded members; still whole */
        write_lines(p, n);
        return;
    }
    memcpy(pending + pending_len, p, n);
    pending_len += n;
    if (!flush_loop) {
        flush_loop = loop;
        ev_timer_init(&flush_timer, on_flush, 0, 0);
    }
    if (!ev_is_active(&flush_timer)) {
        ev_timer_set(&flush_timer, 0, 0);
        ev_timer_start(flush_loop, &flush_timer);
    }
}

/* ---- building lines -------------------------------------------------- */

void access_log_json_string(struct buf *b, const char *s, size_t n)
{
    char tmp[512];
    buf_put(b, "\"", 1);
    while (n) {
        size_t used;
        size_t k = json_escape(tmp, sizeof tmp, s, n, &used);
        buf_put(b, tmp, k);
        s += used;
        n -= used;
    }
    buf_put(b, "\"", 1);
}

static void put_member(struct buf *b, const char *name, const char *s, size_t n)
{
    buf_puts(b, ",\"");
    buf_puts(b, name);
    buf_puts(b, "\":");
    access_log_json_string(b, s, n);
}

static void put_uint(struct buf *b, const char *name, uint64_t v)
{
    char num[24];
    buf_puts(b, ",\"");
    buf_puts(b, name);
    buf_puts(b, "\":");
    buf_put(b, num, fmt_dec(num, v));
}

static int hexdigit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A query key that names a secret: never log its value. The key is
 * compared as the app reads it: %-decoded, "+" a blank, any case. */
static bool secret_key(const char *k, size_t n)
{
    static const char *const words[] = { "token", "jwt", "key", "secret", "password",
                                         "passwd", "auth", "credential", "session" };
    char dec[128];
    size_t m = 0;
    if (n > 3 * sizeof dec)
        return true;   /* too long to judge: assume the worst */
    for (size_t i = 0; i < n && m < sizeof dec - 1; i++) {
        char c = k[i];
        int hi, lo;
        if (c == '%' && i + 2 < n && (hi = hexdigit(k[i + 1])) >= 0 &&
            (lo = hexdigit(k[i + 2])) >= 0) {
            c = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        dec[m++] = c ? c : ' ';
    }
    dec[m] = 0;
    for (size_t w = 0; w < sizeof words / sizeof words[0]; w++)
        if (strcasestr(dec, words[w]))
            return true;
    return false;
}

/* A value that looks like a JWT (or any base64 JSON): "eyJ" is '{"'. */
static bool token_like(const char *v, size_t n)
{
    for (size_t i = 0; i + 3 <= n; i++)
        if (v[i] == 'e' && v[i + 1] == 'y' && v[i + 2] == 'J')
            return true;
    return false;
}

/* The query with the values of secret keys, and anything that looks like
 * a token, replaced by "[redacted]". */
static void put_query(struct buf *b, const char *q, size_t n)
{
    struct buf out = { 0 };
    size_t i = 0;
    while (i <= n) {
        const char *amp = memchr(q + i, '&', n - i);
        size_t end = amp ? (size_t)(amp - q) : n;
        const char *pair = q + i;
        size_t plen = end - i;
        const char *eq = memchr(pair, '=', plen);
        size_t klen = eq ? (size_t)(eq - pair) : plen;
        if (out.len)
            buf_put(&out, "&", 1);
        buf_put(&out, pair, klen);
        if (eq) {
            const char *v = eq + 1;
            size_t vlen = plen - klen - 1;
            buf_put(&out, "=", 1);
            if (vlen && (secret_key(pair, klen) || token_like(v, vlen)))
                buf_puts(&out, "[redacted]");
            else
                buf_put(&out, v, vlen);
        } else if (token_like(pair, klen)) {
            buf_puts(&out, "[redacted]");
        }
        if (!amp)
            break;
        i = end + 1;
    }
    if (out.failed)
        buf_puts(b, ",\"query\":null");
    else
        put_member(b, "query", out.data ? out.data : "", out.len);
    buf_free(&out);
}

/* "method", "path", "query", "remote": what is logged of the request. */
static char *request_members(const char *method, const char *url, size_t ulen, const char *peer)
{
    struct buf b = { 0 };
    if (method)
        put_member(&b, "method", method, strlen(method));
    else
        buf_puts(&b, ",\"method\":null");
    if (url) {
        /* Absolute form: the path starts after scheme and authority. */
        if (ulen > 7 && (strncasecmp(url, "http://", 7) == 0 ||
                         (ulen > 8 && strncasecmp(url, "https://", 8) == 0))) {
            size_t skip = url[4] == ':' ? 7 : 8;
            while (skip < ulen && url[skip] != '/' && url[skip] != '?')
                skip++;
            url += skip;
            ulen -= skip;
        }
        const char *q = memchr(url, '?', ulen);
        size_t plen = q ? (size_t)(q - url) : ulen;
        put_member(&b, "path", plen ? url : "/", plen ? plen : 1);
        if (q && ulen - plen > 1)
            put_query(&b, q + 1, ulen - plen - 1);
    } else {
        buf_puts(&b, ",\"path\":null");
    }
    put_member(&b, "remote", peer ? peer : "unknown", peer ? strlen(peer) : 7);
    buf_put(&b, "", 1);   /* the NUL */
    if (b.failed) {
        buf_free(&b);
        return NULL;
    }
    return b.data;
}

struct access_rec *access_rec_new(const char *method, const char *url, size_t url_len,
                                  const char *peer, const char *xrid, size_t xrid_len,
                                  const char *traceparent, size_t tp_len)
{
    struct access_rec *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    reqid_init(&r->ids, xrid, xrid_len, traceparent, tp_len);
    if (log_fd >= 0) {
        r->start = clock_mono();
        r->request = request_members(method, url, url_len, peer);
    }
    return r;
}

void access_rec_free(struct access_rec *r)
{
    if (!r)
        return;
    free(r->request);
    free(r->app);
    free(r);
}

void access_rec_set_app(struct access_rec *r, char *members, size_t len)
{
    if (len > APP_MEMBERS_MAX) {   /* the runtime bounds it; never a cut member */
        free(members);
        members = NULL;
    }
    free(r->app);
    r->app = members;
}

/* {"time":..., "type":..., "id":..., "trace_id":..., "span_id":...,
 * ["parent_span_id":...] and the request's members. */
static void begin_line(struct buf *b, const struct access_rec *r, const char *type)
{
    struct timespec ts;
    struct tm tm;
    char stamp[40];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t k = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(stamp + k, sizeof stamp - k, ".%03ldZ", ts.tv_nsec / 1000000);
    b->len = 0;
    b->failed = false;
    buf_puts(b, "{\"time\":\"");
    buf_puts(b, stamp);
    buf_puts(b, "\",\"type\":\"");
    buf_puts(b, type);
    buf_puts(b, "\"");
    put_member(b, "id", r->ids.id, r->ids.id_len);
    char hex[32];
    reqid_hex(r->ids.trace, 16, hex);
    put_member(b, "trace_id", hex, 32);
    reqid_hex(r->ids.span, 8, hex);
    put_member(b, "span_id", hex, 16);
    if (r->ids.has_parent) {
        reqid_hex(r->ids.parent, 8, hex);
        put_member(b, "parent_span_id", hex, 16);
    }
    buf_puts(b, r->request);
    if (r->app)
        buf_puts(b, r->app);
    else
        buf_puts(b, ",\"route\":null");
}

static void end_line(struct ev_loop *loop, struct buf *b, const struct access_rec *r,
                     int status, uint64_t bytes)
{
    char num[48];
    buf_puts(b, ",\"status\":");
    buf_put(b, num, fmt_dec(num, (uint64_t)(status > 0 ? status : 0)));
    put_uint(b, "bytes", bytes);
    double ms = (clock_mono() - r->start) * 1000;
    snprintf(num, sizeof num, ",\"duration_ms\":%.3f", ms > 0 ? ms : 0.0);
    buf_puts(b, num);
    buf_puts(b, "}\n");
    if (b->failed) {
        lose("\n", 1, "out of memory");
        return;
    }
    append(loop, b->data, b->len);
}

void access_log_answer(struct ev_loop *loop, const struct access_rec *r, int status,
                       uint64_t bytes)
{
    if (log_fd < 0 || !r || !r->request)
        return;
    begin_line(&line, r, "request");
    end_line(loop, &line, r, status, bytes);
}

void access_log_stream(struct ev_loop *loop, const struct access_rec *r,
                       const struct sse_stream *s)
{
    if (log_fd < 0 || !r || !r->request)
        return;
    begin_line(&line, r, "stream");
    if (s->subs && s->env->describe_subs) {
        buf_puts(&line, ",");
        s->env->describe_subs(s, &line);
    } else {
        buf_puts(&line, ",\"channels\":[]");
    }
    put_uint(&line, "events", s->out.events_written);
    buf_puts(&line, ",\"end\":\"");
    buf_puts(&line, access_log_end_name((enum stream_end)s->end_reason));
    buf_puts(&line, "\",\"resumed\":");
    buf_puts(&line, r->resumed ? "true" : "false");
    if (r->resumed)
        buf_puts(&line, s->resume_reset ? ",\"resume\":\"reset\"" : ",\"resume\":\"exact\"");
    uint64_t bytes = s->out.written - r->written_at_open;
    end_line(loop, &line, r, 200, bytes);
}
