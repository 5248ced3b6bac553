/* loadgen: load generator for sluice (SSE over HTTP/1.1, loopback only).
 *
 * Modes:
 *   fanout  N subscribers on one channel, one publisher (or --pub-conns of
 *           them) POSTing M events at a fixed rate, or one POST that has the
 *           server publish M itself (--burst-path); checks every subscriber
 *           got every event exactly once and in order, with increasing ids,
 *           and measures publish->receive latency.
 *   idle    N subscribers that just stay open; server RSS per stream.
 *   churn   for D seconds, open/await-first-chunk/close subscriptions with
 *           C in flight; subscriptions per second.
 *   http    keep-alive GET load on a plain route: N connections, optional
 *           pipelining, fixed duration; requests per second (reqload.c).
 *   free-port, wait-listen, get, hup-wait: helpers for bench/run.
 *
 * One thread, one epoll set, level-triggered. Every loop is bounded by a
 * count or a deadline; the program always stops by itself (--max-time).
 */
#define _GNU_SOURCE
#include "clock.h"
#include "hist.h"
#include "net.h"
#include "publisher.h"
#include "reqload.h"
#include "stream_parse.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_MS 1000000ULL
#define MAX_EPOLL_EVENTS 1024
#define READ_BUF_SIZE 65536
#define CHURN_GIVE_UP_ERRORS 2000
#define MAX_SUB_PATHS 8
#define MAX_SUB_PORTS 8
#define MAX_ALSO_PIDS 4
#define MAX_PATH_LEN 300
#define MAX_PAYLOAD_FIELDS 4000
#define MAX_PUB_CONNS 1024

enum mode { MODE_FANOUT, MODE_IDLE, MODE_CHURN, MODE_HTTP, MODE_FREE_PORT, MODE_WAIT_LISTEN,
	    MODE_GET, MODE_HUP_WAIT };

struct config {
	enum mode mode;
	struct sockaddr_in dst;
	char host[64];
	int port;
	const char *channel;
	int auth;
	const char *token;
	unsigned subs;
	unsigned events;
	double rate;
	unsigned pub_inflight;
	unsigned pub_conns;	/* publishing connections; seqs split by stride */
	const char *burst_path;	/* one POST makes the server publish --events */
	int rx_timestamps;
	int spin;		/* fanout: poll without sleeping (see --help) */
	unsigned payload_size;
	unsigned connect_concurrency;
	double connect_timeout_s;
	double wait_s;
	double pub_timeout_s;
	double duration_s;
	unsigned churn_concurrency;
	double attempt_timeout_s;
	double settle_s;
	double hold_s;
	double max_time_s;
	long server_pid;
	unsigned src_addrs;
	int verbose;
	const char *sub_paths[MAX_SUB_PATHS];	/* --sub-path, round-robin */
	unsigned nsub_paths;
	struct sockaddr_in sub_dsts[MAX_SUB_PORTS];	/* --sub-port, round-robin */
	int sub_ports[MAX_SUB_PORTS];
	unsigned nsub_ports;
	long aux_pid;		/* --aux-pid: CPU reported apart (Redis) */
	const char *payload_fields;	/* extra JSON members in every event */
	const char *path;		/* http, get, hup-wait */
	unsigned conns;
	unsigned pipeline;
	double warmup_s;
	const char *expect;
	double timeout_s;
};

/* ---- small utilities ---------------------------------------------------- */

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("loadgen: ", stderr);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(2);
}

static void close_fd(int fd)
{
	/* close() on a socket only fails for a bad fd, which would be our bug */
	if (close(fd) != 0)
		die("close(%d): %s", fd, strerror(errno));
}

static double ns_to_ms(uint64_t ns)
{
	return (double)ns / 1e6;
}

/* VmRSS of a process in KiB, or -1. */
static long read_rss_kib(long pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%ld/status", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	char line[256];
	long kib = -1;
	for (int i = 0; i < 200 && fgets(line, sizeof line, f); i++) {
		if (strncmp(line, "VmRSS:", 6) == 0) {
			kib = strtol(line + 6, NULL, 10);
			break;
		}
	}
	if (fclose(f) != 0)
		return -1;
	return kib;
}

/* CPU time (user + system) of a process in ns, from /proc/PID/stat; -1 if
 * unreadable. */
static long long read_proc_cpu_ns(long pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof path, "/proc/%ld/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	if (fclose(f) != 0 || n == 0)
		return -1;
	buf[n] = 0;
	/* the command name may hold spaces and ')': fields restart after the last ')' */
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	unsigned long long utime, stime;
	/* after ')': state ppid pgrp session tty_nr tpgid flags minflt cminflt
	 * majflt cmajflt utime stime */
	if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
		   &utime, &stime) != 2)
		return -1;
	long tck = sysconf(_SC_CLK_TCK);
	if (tck <= 0)
		return -1;
	return (long long)((utime + stime) * (NS_PER_S / (unsigned long long)tck));
}

/* --also-pid: more server processes (other nodes), their CPU added to the
 * server's. A global, so the cpu_window helpers keep their one pid. */
static long also_pids[MAX_ALSO_PIDS];
static unsigned nalso_pids;

/* CPU time of the server (pid) plus every --also-pid, -1 if one is
 * unreadable */
static long long server_cpu_ns(long pid)
{
	if (pid <= 0)
		return -1;
	long long sum = read_proc_cpu_ns(pid);
	for (unsigned i = 0; i < nalso_pids && sum >= 0; i++) {
		long long v = read_proc_cpu_ns(also_pids[i]);
		sum = v >= 0 ? sum + v : -1;
	}
	return sum;
}

static long long self_cpu_ns(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) != 0)
		die("getrusage: %s", strerror(errno));
	return ((long long)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * (long long)NS_PER_S +
	       ((long long)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000LL;
}

/* CPU use over a window, in % of one core (-1 if unknown) */
struct cpu_window {
	uint64_t t0;
	long long server0;
	long long self0;
};

static void cpu_window_start(struct cpu_window *w, long server_pid)
{
	w->t0 = now_ns();
	w->server0 = server_cpu_ns(server_pid);
	w->self0 = self_cpu_ns();
}

static void cpu_window_end(const struct cpu_window *w, long server_pid, double *server_pct,
			   double *self_pct)
{
	uint64_t wall = now_ns() - w->t0;
	long long server1 = server_cpu_ns(server_pid);
	long long self1 = self_cpu_ns();
	*server_pct = (wall && w->server0 >= 0 && server1 >= 0)
		? 100.0 * (double)(server1 - w->server0) / (double)wall : -1;
	*self_pct = wall ? 100.0 * (double)(self1 - w->self0) / (double)wall : -1;
}

/* server CPU time (ns) since the window started, -1 if unknown */
static long long cpu_window_server_ns(const struct cpu_window *w, long server_pid)
{
	long long server1 = server_cpu_ns(server_pid);
	return (server1 >= 0 && w->server0 >= 0) ? server1 - w->server0 : -1;
}

static void print_cpu(const char *during, double server_pct, double self_pct, int spinning)
{
	printf("  CPU during %s: server ", during);
	if (server_pct >= 0)
		printf("%.0f%%", server_pct);
	else
		printf("?");
	printf(", loadgen %.0f%% (of one core)%s\n", self_pct,
	       spinning ? ", spinning: its CPU says nothing about its load; compare\n"
			  "  delivery latency with arrival latency instead" : "");
	if (self_pct >= 90 && !spinning)
		printf("  warning: the load generator was (nearly) saturated; figures include "
		       "its own delay\n");
}

/* ---- state -------------------------------------------------------------- */

enum sub_phase {
	SUB_UNUSED,
	SUB_CONNECTING,	/* non-blocking connect in progress */
	SUB_SENDING,	/* request partly written */
	SUB_HEAD,	/* waiting for the response head */
	SUB_OPEN,	/* 200 + event-stream head seen */
	SUB_CLOSED,
};

enum sub_error {
	ERR_CONNECT,	/* socket/bind/connect failed */
	ERR_STATUS,	/* non-200 answer */
	ERR_PROTOCOL,	/* not an event stream, malformed framing */
	ERR_CLOSED,	/* server closed/reset before we were done */
	ERR_TIMEOUT,
	ERR_KINDS,
};

static const char *const error_names[ERR_KINDS] = {
	"connect", "status", "protocol", "closed", "timeout",
};

struct sub {
	int fd;
	uint8_t phase;
	uint8_t got_body;
	uint8_t was_open;	/* reached SUB_OPEN at some point */
	uint8_t path;		/* index into bench.paths */
	uint16_t req_sent;
	uint16_t status;
	uint32_t index;
	uint64_t t_start;
	uint64_t received;	/* events incl. duplicates */
	uint64_t distinct;
	uint64_t next_expected;	/* highest seq seen + 1 */
	uint64_t *class_next;	/* per publishing connection (seq % pub_conns):
				 * its highest seq seen + 1; NULL with one */
	uint64_t last_id;	/* last numeric id: ids must increase */
	uint32_t id_back;	/* ids not above the previous one */
	uint32_t dup;
	uint32_t ooo;
	uint32_t bad;
	uint32_t no_id;
	uint32_t comments;
	uint8_t *seen;		/* bitmap of seqs, fanout only */
	struct stream_parser sp;
};

/* streams by subscribe path (--sub-path): each path may be a different view */
struct path_stats {
	char path[MAX_PATH_LEN + 20];
	char req[MAX_PATH_LEN + 200];
	size_t req_len;
	unsigned subs;
	uint64_t received;
	uint64_t missing;
	struct hist lat;
};

struct bench {
	struct config cfg;
	int epfd;
	struct sub *subs;
	unsigned nsubs;
	struct path_stats paths[MAX_SUB_PATHS];
	unsigned npaths;
	unsigned next_src;
	uint64_t now;		/* refreshed per read: receive timestamps */
	uint64_t arrival;	/* kernel receive time of that read, 0 = none */
	int64_t real_minus_mono; /* to turn kernel (realtime) stamps monotonic */

	/* connect phase */
	unsigned pending;
	unsigned ready;
	uint64_t errors[ERR_KINDS];
	int last_errno;
	int last_status;

	/* fanout */
	struct publisher *pubs;	/* --pub-conns of them */
	unsigned npubs;
	uint64_t events_received;
	uint64_t first_receive;
	uint64_t last_receive;
	uint64_t drops;
	uint64_t no_arrival;	/* events without a kernel receive timestamp */
	struct hist lat;
	struct hist arrival_lat;

	/* churn */
	uint64_t churn_done;
	struct hist open_lat;
};

static char read_buf[READ_BUF_SIZE];

enum { KIND_SUB = 1, KIND_PUB = 2, KIND_TIMER = 3 };

static uint64_t tag(uint32_t kind, uint32_t index)
{
	return ((uint64_t)kind << 32) | index;
}

static void ep_add(struct bench *b, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	if (epoll_ctl(b->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
		die("epoll_ctl ADD: %s", strerror(errno));
}

static void ep_mod(struct bench *b, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };
	if (epoll_ctl(b->epfd, EPOLL_CTL_MOD, fd, &ev) != 0)
		die("epoll_ctl MOD: %s", strerror(errno));
}

static unsigned next_source(struct bench *b)
{
	if (b->cfg.src_addrs == 0)
		return 0;	/* the kernel picks 127.0.0.1 and a port */
	unsigned src = 1 + (b->next_src % b->cfg.src_addrs);
	b->next_src++;
	return src;
}

/* ---- subscriber streams ------------------------------------------------- */

static void sub_close(struct bench *b, struct sub *s)
{
	if (s->fd >= 0)
		close_fd(s->fd);	/* close also removes it from epoll */
	s->fd = -1;
	if (s->phase >= SUB_CONNECTING && s->phase <= SUB_HEAD && b->pending > 0)
		b->pending--;
	s->phase = SUB_CLOSED;
}

static void sub_fail(struct bench *b, struct sub *s, enum sub_error kind)
{
	b->errors[kind]++;
	if (b->cfg.verbose && b->errors[kind] <= 5)
		fprintf(stderr, "loadgen: stream %u: %s error (errno %d, status %d, %s)\n",
			s->index, error_names[kind], b->last_errno, b->last_status,
			sp_error(&s->sp));
	sub_close(b, s);
}

static void sub_start(struct bench *b, struct sub *s)
{
	s->fd = -1;
	s->phase = SUB_CONNECTING;
	s->got_body = 0;
	s->was_open = 0;
	s->status = 0;
	s->req_sent = 0;
	s->t_start = now_ns();
	sp_init(&s->sp);
	b->pending++;
	/* a stream sends one request: no TCP_NODELAY needed */
	const struct sockaddr_in *dst = b->cfg.nsub_ports
		? &b->cfg.sub_dsts[s->index % b->cfg.nsub_ports] : &b->cfg.dst;
	int fd = net_connect_from(dst, next_source(b), 0);
	if (fd < 0) {
		b->last_errno = -fd;
		sub_fail(b, s, ERR_CONNECT);
		return;
	}
	s->fd = fd;
	if (b->cfg.rx_timestamps && net_enable_rx_stamps(fd) != 0)
		die("setsockopt SO_TIMESTAMPNS: %s", strerror(errno));
	/* On loopback the handshake usually completes inside connect(): send
	 * at once and skip a wait for EPOLLOUT, an SO_ERROR check and an
	 * epoll_ctl MOD per connection (churn measures the server, so the
	 * generator should spend as little as it can). */
	const struct path_stats *ps = &b->paths[s->path];
	ssize_t n = send(fd, ps->req, ps->req_len, MSG_NOSIGNAL);
	if (n == (ssize_t)ps->req_len) {
		s->req_sent = (uint16_t)n;
		s->phase = SUB_HEAD;
		ep_add(b, fd, EPOLLIN, tag(KIND_SUB, s->index));
		return;
	}
	if (n > 0) {
		s->req_sent = (uint16_t)n;
		s->phase = SUB_SENDING;
	}
	/* not connected yet (EAGAIN, ENOTCONN) or a failed connect: EPOLLOUT
	 * and SO_ERROR tell which */
	ep_add(b, fd, EPOLLOUT | EPOLLIN, tag(KIND_SUB, s->index));
}

static void sub_send(struct bench *b, struct sub *s)
{
	const struct path_stats *ps = &b->paths[s->path];
	while (s->req_sent < ps->req_len) {
		ssize_t n = send(s->fd, ps->req + s->req_sent, ps->req_len - s->req_sent,
				 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;	/* EPOLLOUT brings us back */
			if (errno == EINTR)
				continue;
			b->last_errno = errno;
			sub_fail(b, s, ERR_CLOSED);
			return;
		}
		s->req_sent = (uint16_t)(s->req_sent + (size_t)n);
	}
	s->phase = SUB_HEAD;
	ep_mod(b, s->fd, EPOLLIN, tag(KIND_SUB, s->index));
}

static int on_head(void *ctx, const struct sp_head *h)
{
	struct sub *s = ctx;
	s->status = (uint16_t)h->status;
	if (h->status != 200) {
		s->sp.error = "status";
		return 1;
	}
	if (!h->is_event_stream) {
		s->sp.error = "200 without Content-Type: text/event-stream";
		return 1;
	}
	s->phase = SUB_OPEN;
	return 0;
}

/* The parser callbacks need the bench; one global keeps struct sub small. */
static struct bench *g_bench;

static int on_body(void *ctx, size_t n)
{
	struct sub *s = ctx;
	(void)n;
	if (!s->got_body) {
		s->got_body = 1;
		/* churn: an opened subscription is one with its first chunk */
		if (g_bench->cfg.mode == MODE_CHURN)
			return 1;
	}
	return 0;
}

static int on_comment(void *ctx, const char *text, size_t len)
{
	struct sub *s = ctx;
	(void)text;
	(void)len;
	s->comments++;
	return 0;
}

static int on_event(void *ctx, const struct sp_event *ev)
{
	struct sub *s = ctx;
	struct bench *b = g_bench;
	uint64_t seq, ts;

	s->received++;
	b->events_received++;
	if (!ev->has_id) {
		s->no_id++;
	} else {
		/* numeric ids (sluice's) must grow on a stream; others are skipped */
		uint64_t id = 0;
		size_t k = 0;
		for (; k < ev->id_len && k < 20 && ev->id[k] >= '0' && ev->id[k] <= '9'; k++)
			id = id * 10 + (uint64_t)(ev->id[k] - '0');
		if (k > 0 && k == ev->id_len) {
			if (id <= s->last_id)
				s->id_back++;
			s->last_id = id;
		}
	}
	/* seq and ts were picked out of the whole data (any length, any key
	 * order) while it streamed in; ev->data is only its first bytes */
	if (!ev->payload_ok || ev->seq >= b->cfg.events || !s->seen) {
		s->bad++;
		return 0;
	}
	seq = ev->seq;
	ts = ev->ts;
	struct path_stats *ps = &b->paths[s->path];
	ps->received++;
	hist_add(&ps->lat, b->now >= ts ? b->now - ts : 0);
	/* same host, same CLOCK_MONOTONIC: receive time - publish time */
	hist_add(&b->lat, b->now >= ts ? b->now - ts : 0);
	if (b->arrival)
		hist_add(&b->arrival_lat, b->arrival >= ts ? b->arrival - ts : 0);
	else
		b->no_arrival++;
	if (b->first_receive == 0)
		b->first_receive = b->now;
	b->last_receive = b->now;

	uint8_t bit = (uint8_t)(1u << (seq & 7));
	if (s->seen[seq >> 3] & bit) {
		s->dup++;
		return 0;
	}
	s->seen[seq >> 3] |= bit;
	s->distinct++;
	/* several publishing connections: only each one's own order is defined */
	uint64_t *next = s->class_next ? &s->class_next[seq % b->npubs] : &s->next_expected;
	if (seq + 1 < *next)
		s->ooo++;
	else
		*next = seq + 1;
	return 0;
}

static const struct sp_callbacks sub_callbacks = {
	.on_head = on_head,
	.on_body = on_body,
	.on_event = on_event,
	.on_comment = on_comment,
};

/* A stream that was open and ended (or broke) while we still wanted it. */
static void sub_lost(struct bench *b, struct sub *s, enum sub_error kind)
{
	if (s->phase == SUB_OPEN && b->cfg.mode != MODE_CHURN) {
		b->drops++;
		sub_close(b, s);
		return;
	}
	sub_fail(b, s, kind);
}

/* read(), plus the kernel's receive timestamp of the data when enabled */
static ssize_t read_stamped(struct bench *b, int fd)
{
	if (!b->cfg.rx_timestamps)
		return read(fd, read_buf, sizeof read_buf);
	return net_read_stamped(fd, read_buf, sizeof read_buf, b->real_minus_mono, &b->arrival);
}

static void sub_readable(struct bench *b, struct sub *s)
{
	ssize_t n = read_stamped(b, s->fd);
	int err = errno;	/* before the clock call can touch it */
	b->now = now_ns();
	if (n < 0) {
		if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
			return;
		b->last_errno = err;
		sub_lost(b, s, ERR_CLOSED);
		return;
	}
	if (n == 0) {
		b->last_errno = 0;
		sub_lost(b, s, ERR_CLOSED);
		return;
	}
	enum sp_result r = sp_feed(&s->sp, read_buf, (size_t)n, &sub_callbacks, s);
	if (s->phase == SUB_OPEN && !s->was_open) {
		s->was_open = 1;
		b->pending--;
		if (b->cfg.mode != MODE_CHURN)
			b->ready++;
	}

	switch (r) {
	case SP_MORE:
		return;
	case SP_END:
		sub_lost(b, s, ERR_CLOSED);
		return;
	case SP_STOPPED:
		if (s->phase == SUB_OPEN && b->cfg.mode == MODE_CHURN && s->got_body) {
			hist_add(&b->open_lat, b->now - s->t_start);
			b->churn_done++;
			sub_close(b, s);
			return;
		}
		if (s->phase != SUB_OPEN && s->status != 200) {
			b->last_status = s->status;
			sub_fail(b, s, ERR_STATUS);
			return;
		}
		sub_fail(b, s, ERR_PROTOCOL);
		return;
	case SP_ERROR:
		sub_lost(b, s, ERR_PROTOCOL);
		return;
	}
}

static void sub_event(struct bench *b, struct sub *s, uint32_t events)
{
	if (s->phase == SUB_CONNECTING) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		int err = net_connect_result(s->fd);
		if (err != 0) {
			b->last_errno = err;
			sub_fail(b, s, ERR_CONNECT);
			return;
		}
		s->phase = SUB_SENDING;
	}
	if (s->phase == SUB_SENDING) {
		sub_send(b, s);
		return;
	}
	if (s->phase == SUB_HEAD || s->phase == SUB_OPEN)
		sub_readable(b, s);
}

/* ---- event loop --------------------------------------------------------- */

static void dispatch(struct bench *b, int timeout_ms)
{
	struct epoll_event evs[MAX_EPOLL_EVENTS];
	int n = epoll_wait(b->epfd, evs, MAX_EPOLL_EVENTS, timeout_ms);
	if (n < 0) {
		if (errno == EINTR)
			return;
		die("epoll_wait: %s", strerror(errno));
	}
	for (int i = 0; i < n; i++) {
		uint32_t kind = (uint32_t)(evs[i].data.u64 >> 32);
		uint32_t idx = (uint32_t)evs[i].data.u64;
		if (kind == KIND_SUB) {
			struct sub *s = &b->subs[idx];
			if (s->fd >= 0)
				sub_event(b, s, evs[i].events);
		} else if (kind == KIND_PUB && idx < b->npubs) {
			pub_on_conn_event(&b->pubs[idx], evs[i].events);
		} else if (kind == KIND_TIMER && idx < b->npubs) {
			pub_on_timer(&b->pubs[idx]);
		}
	}
	if (b->cfg.mode == MODE_FANOUT && (n == MAX_EPOLL_EVENTS || b->cfg.spin))
		for (unsigned p = 0; p < b->npubs; p++)
			pub_poll_schedule(&b->pubs[p]);
}

/* ms until deadline, at most cap_ms, at least 0 */
static int ms_until(uint64_t deadline, uint64_t now, int cap_ms)
{
	if (deadline <= now)
		return 0;
	uint64_t ms = (deadline - now + NS_PER_MS - 1) / NS_PER_MS;
	return ms > (uint64_t)cap_ms ? cap_ms : (int)ms;
}

/* Opens the subscriptions with at most connect_concurrency in flight.
 * Returns when all are open or failed, or at the deadline. */
static void open_all(struct bench *b, uint64_t deadline)
{
	unsigned next = 0;
	unsigned concurrency = b->cfg.connect_concurrency;
	uint64_t t = now_ns();
	unsigned last_report_ready = 0;
	uint64_t last_report = t;
	while (t < deadline) {
		while (next < b->nsubs && b->pending < concurrency)
			sub_start(b, &b->subs[next++]);
		if (next >= b->nsubs && b->pending == 0)
			return;
		dispatch(b, ms_until(deadline, t, 100));
		t = now_ns();
		if (b->cfg.verbose && t - last_report > NS_PER_S && b->ready != last_report_ready) {
			fprintf(stderr, "loadgen: %u/%u streams open\n", b->ready, b->nsubs);
			last_report = t;
			last_report_ready = b->ready;
		}
	}
	/* deadline: whatever is still pending has timed out */
	for (unsigned i = 0; i < b->nsubs; i++) {
		struct sub *s = &b->subs[i];
		if (s->phase >= SUB_CONNECTING && s->phase <= SUB_HEAD)
			sub_fail(b, s, ERR_TIMEOUT);
	}
}

/* Keeps the streams serviced (heartbeats, drops) until the deadline. */
static void pump_until(struct bench *b, uint64_t deadline)
{
	uint64_t t = now_ns();
	while (t < deadline) {
		dispatch(b, ms_until(deadline, t, 100));
		t = now_ns();
	}
}

static unsigned count_open(const struct bench *b)
{
	unsigned n = 0;
	for (unsigned i = 0; i < b->nsubs; i++)
		n += b->subs[i].phase == SUB_OPEN;
	return n;
}

/* ---- reports ------------------------------------------------------------ */

static uint64_t total_errors(const struct bench *b)
{
	uint64_t n = 0;
	for (int k = 0; k < ERR_KINDS; k++)
		n += b->errors[k];
	return n;
}

static void print_errors(const struct bench *b)
{
	printf("  errors: %" PRIu64 " (", total_errors(b));
	for (int k = 0; k < ERR_KINDS; k++)
		printf("%s%s %" PRIu64, k ? ", " : "", error_names[k], b->errors[k]);
	printf(")");
	if (b->last_errno)
		printf(" last errno: %s", strerror(b->last_errno));
	if (b->last_status)
		printf(" last status: %d", b->last_status);
	printf("\n");
}

static void print_hist_line(const char *label, const struct hist *h)
{
	if (h->count == 0) {
		printf("  %s: no samples\n", label);
		return;
	}
	printf("  %s: p50 %.3f ms  p99 %.3f ms  max %.3f ms  (%" PRIu64 " samples)\n",
	       label, ns_to_ms(hist_quantile(h, 0.50)), ns_to_ms(hist_quantile(h, 0.99)),
	       ns_to_ms(h->max), h->count);
}

static void result_hist(const char *prefix, const struct hist *h)
{
	printf(" %s_p50_us=%" PRIu64 " %s_p99_us=%" PRIu64 " %s_max_us=%" PRIu64, prefix,
	       hist_quantile(h, 0.50) / 1000, prefix, hist_quantile(h, 0.99) / 1000, prefix,
	       h->max / 1000);
}

static void print_target(const struct bench *b, const char *mode)
{
	printf("loadgen %s: target %s:%d  stream path%s", mode, b->cfg.host, b->cfg.port,
	       b->npaths > 1 ? "s (round-robin)" : "");
	for (unsigned p = 0; p < b->npaths; p++)
		printf(" %s", b->paths[p].path);
	if (b->cfg.nsub_ports) {
		printf("  streams on port%s", b->cfg.nsub_ports > 1 ? "s (round-robin)" : "");
		for (unsigned i = 0; i < b->cfg.nsub_ports; i++)
			printf(" %d", b->cfg.sub_ports[i]);
	}
	if (b->cfg.src_addrs)
		printf("  source addresses 127.0.0.1-%u", b->cfg.src_addrs);
	else
		printf("  source address chosen by the kernel");
	printf("%s\n", b->cfg.spin ? "  generator spins (--spin)" : "");
}

/* ---- modes -------------------------------------------------------------- */

static void setup_streams(struct bench *b, unsigned n)
{
	b->nsubs = n;
	b->subs = calloc(n ? n : 1, sizeof *b->subs);
	if (!b->subs)
		die("out of memory for %u streams", n);
	for (unsigned i = 0; i < n; i++) {
		b->subs[i].fd = -1;
		b->subs[i].index = i;
		b->subs[i].path = (uint8_t)(i % b->npaths);
		b->paths[i % b->npaths].subs++;
	}
}

/* CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few paired
 * readings: kernel receive timestamps are realtime, our payloads monotonic. */
static int64_t realtime_offset(void)
{
	int64_t best = 0;
	uint64_t best_gap = UINT64_MAX;
	for (int i = 0; i < 16; i++) {
		struct timespec real;
		uint64_t m1 = now_ns();
		if (clock_gettime(CLOCK_REALTIME, &real) != 0)
			die("clock_gettime: %s", strerror(errno));
		uint64_t m2 = now_ns();
		if (m2 - m1 < best_gap) {
			best_gap = m2 - m1;
			best = (int64_t)real.tv_sec * (int64_t)NS_PER_S + real.tv_nsec -
			       (int64_t)(m1 + (m2 - m1) / 2);
		}
	}
	return best;
}

static int run_fanout(struct bench *b)
{
	const struct config *c = &b->cfg;
	setup_streams(b, c->subs);
	size_t bitmap_bytes = ((size_t)c->events + 7) / 8;
	if ((double)bitmap_bytes * c->subs > 1024.0 * 1024 * 1024)
		die("--subs x --events too large for the per-stream bitmaps (1 GiB cap)");
	uint8_t *bits = calloc((size_t)c->subs + 1, bitmap_bytes ? bitmap_bytes : 1);
	if (!bits)
		die("out of memory for bitmaps");
	for (unsigned i = 0; i < c->subs; i++)
		b->subs[i].seen = bits + (size_t)i * bitmap_bytes;
	uint8_t *ok_bits = bits + (size_t)c->subs * bitmap_bytes;

	/* --pub-conns N: connection k sends seqs k, k+N, k+2N ... at rate/N */
	b->npubs = c->burst_path ? 1 : c->pub_conns;
	if (b->npubs > c->events && c->events > 0)
		b->npubs = c->events;
	if (b->npubs == 0)
		b->npubs = 1;
	uint64_t *class_next = NULL;
	if (b->npubs > 1) {
		class_next = calloc((size_t)c->subs * b->npubs, sizeof *class_next);
		if (!class_next)
			die("out of memory for the per-connection order check");
		for (unsigned i = 0; i < c->subs; i++)
			b->subs[i].class_next = class_next + (size_t)i * b->npubs;
	}
	b->pubs = calloc(b->npubs, sizeof *b->pubs);
	if (!b->pubs)
		die("out of memory for the publishers");
	b->real_minus_mono = realtime_offset();
	struct pub_config pc = {
		.dst = c->dst, .host = c->host, .port = c->port, .channel = c->channel,
		.events = c->events, .rate = c->rate / b->npubs, .payload_size = c->payload_size,
		.inflight = c->pub_inflight, .verbose = c->verbose, .extra = c->payload_fields,
		.rx_timestamps = c->rx_timestamps, .real_minus_mono = b->real_minus_mono,
		.seq_stride = b->npubs, .burst_path = c->burst_path,
	};
	for (unsigned p = 0; p < b->npubs; p++) {
		pc.seq_first = p;
		pc.events = c->events / b->npubs + (p < c->events % b->npubs);
		if (pub_init(&b->pubs[p], &pc, b->epfd, tag(KIND_PUB, p), tag(KIND_TIMER, p),
			     ok_bits) != 0)
			die("out of memory for the publisher");
	}
	if (c->burst_path)
		pc.inflight = 1;

	uint64_t t0 = now_ns();
	uint64_t hard_deadline = t0 + secs_to_ns(c->max_time_s);
	long rss_before = c->server_pid > 0 ? read_rss_kib(c->server_pid) : -1;

	uint64_t connect_deadline = t0 + secs_to_ns(c->connect_timeout_s);
	open_all(b, connect_deadline < hard_deadline ? connect_deadline : hard_deadline);
	uint64_t t_open = now_ns();
	unsigned ready = b->ready;
	long rss_open = c->server_pid > 0 ? read_rss_kib(c->server_pid) : -1;

	/* publish (only if someone listens); then wait, bounded, for stragglers */
	uint64_t t = now_ns();
	uint64_t drain_deadline = 0;
	uint64_t last_check = 0;
	struct cpu_window cpu;
	cpu_window_start(&cpu, c->server_pid);
	long long aux0 = c->aux_pid > 0 ? read_proc_cpu_ns(c->aux_pid) : -1;
	if (ready > 0)
		for (unsigned p = 0; p < b->npubs; p++)
			pub_start(&b->pubs[p]);
	else
		drain_deadline = t;
	uint64_t accepted = 0;
	while (t < hard_deadline) {
		int cap = drain_deadline ? ms_until(drain_deadline, t, 20) : 100;
		dispatch(b, c->spin ? 0 : ms_until(hard_deadline, t, cap));
		t = now_ns();
		int finished = 1;
		accepted = 0;
		for (unsigned p = 0; p < b->npubs; p++) {
			pub_check_timeout(&b->pubs[p], t, secs_to_ns(c->pub_timeout_s));
			finished &= pub_finished(&b->pubs[p]);
			accepted += b->pubs[p].ok;
		}
		if (!drain_deadline && finished)
			drain_deadline = t + secs_to_ns(c->wait_s);
		if (!drain_deadline)
			continue;
		if (t >= drain_deadline)
			break;
		if (t - last_check < 10 * NS_PER_MS)
			continue;
		last_check = t;
		/* done early when every open stream has every accepted event */
		int all = 1;
		for (unsigned i = 0; i < b->nsubs && all; i++)
			if (b->subs[i].phase == SUB_OPEN && b->subs[i].distinct < accepted)
				all = 0;
		if (all)
			break;
	}
	uint64_t t_end = now_ns();
	double server_cpu, self_cpu;
	long long server_ns = cpu_window_server_ns(&cpu, c->server_pid);
	cpu_window_end(&cpu, c->server_pid, &server_cpu, &self_cpu);
	long long aux1 = c->aux_pid > 0 ? read_proc_cpu_ns(c->aux_pid) : -1;
	/* the publishers as one: counts summed, span from the first send to the
	 * last, latencies merged */
	struct publisher all;
	struct publisher *pub = &all;
	int gave_up = 0;
	memset(&all, 0, sizeof all);
	all.subs_min = all.subs_max = -1;
	hist_init(&all.lat);
	hist_init(&all.lat_arrival);
	hist_init(&all.lag);
	for (unsigned p = 0; p < b->npubs; p++) {
		const struct publisher *q = &b->pubs[p];
		all.next_seq += q->next_seq;
		all.ok += q->ok;
		all.failed += q->failed;
		if (q->first_send && (!all.first_send || q->first_send < all.first_send))
			all.first_send = q->first_send;
		if (q->last_send > all.last_send)
			all.last_send = q->last_send;
		if (q->subs_min >= 0 && (all.subs_min < 0 || q->subs_min < all.subs_min))
			all.subs_min = q->subs_min;
		if (q->subs_max > all.subs_max)
			all.subs_max = q->subs_max;
		if (q->max_body > all.max_body)
			all.max_body = q->max_body;
		hist_merge(&all.lat, &q->lat);
		hist_merge(&all.lat_arrival, &q->lat_arrival);
		hist_merge(&all.lag, &q->lag);
		gave_up |= pub_gave_up(q);
	}
	double aux_cpu_us_per_event = aux0 >= 0 && aux1 >= 0 && pub->ok > 0
		? (double)(aux1 - aux0) / 1e3 / (double)pub->ok : -1;
	double aux_cpu_pct = aux0 >= 0 && aux1 >= 0 && t_end > cpu.t0
		? 100.0 * (double)(aux1 - aux0) / (double)(t_end - cpu.t0) : -1;
	long rss_end = c->server_pid > 0 ? read_rss_kib(c->server_pid) : -1;
	/* CPU time per event (fan-out to every stream included): unlike rates,
	 * time other work takes on the server's core does not enter it */
	double cpu_us_per_event = server_ns >= 0 && pub->ok > 0
		? (double)server_ns / 1e3 / (double)pub->ok : -1;
	int64_t clock_drift = realtime_offset() - b->real_minus_mono;

	/* tally: missing = accepted events that a stream, once open, never got */
	uint64_t missing = 0, dup = 0, ooo = 0, bad = 0, no_id = 0, comments = 0, id_back = 0;
	uint64_t streams_missing = 0;
	for (unsigned i = 0; i < b->nsubs; i++) {
		struct sub *s = &b->subs[i];
		dup += s->dup;
		ooo += s->ooo;
		bad += s->bad;
		no_id += s->no_id;
		id_back += s->id_back;
		comments += s->comments;
		if (!s->was_open)
			continue;	/* never subscribed: counted under errors */
		uint64_t m = 0;
		for (uint64_t q = 0; q < c->events; q++) {
			uint8_t bit = (uint8_t)(1u << (q & 7));
			if ((ok_bits[q >> 3] & bit) && !(s->seen[q >> 3] & bit))
				m++;
		}
		missing += m;
		streams_missing += m > 0;
		b->paths[s->path].missing += m;
	}
	uint64_t expected = (uint64_t)ready * pub->ok;
	uint64_t span = b->last_receive > pub->first_send ? b->last_receive - pub->first_send : 0;
	double deliveries_per_s = span ? (double)b->events_received * 1e9 / (double)span : 0;
	uint64_t pub_span = pub->last_send - pub->first_send;
	double pub_rate = pub_span && pub->next_seq > 1
		? (double)(pub->next_seq - 1) * 1e9 / (double)pub_span : 0;
	uint64_t open_errors = total_errors(b);

	print_target(b, "fanout");
	if (ready < b->nsubs)
		printf("  note: only %u of %u streams opened; missing counts opened ones only\n",
		       ready, b->nsubs);
	printf("  streams: %u requested, %u opened in %.2f s (concurrency %u), "
	       "%" PRIu64 " dropped by the server during the run\n",
	       b->nsubs, ready, (double)(t_open - t0) / 1e9, c->connect_concurrency, b->drops);
	print_errors(b);
	printf("  publish: %" PRIu64 " sent, %" PRIu64 " accepted, %" PRIu64 " failed%s; "
	       "target %.1f/s, achieved %.1f/s; up to %u in flight; payload >= %u bytes\n",
	       pub->next_seq, pub->ok, pub->failed, gave_up ? " (gave up)" : "",
	       c->rate, pub_rate, pc.inflight, c->payload_size);
	if (b->npubs > 1)
		printf("  publishing connections: %u (seqs split by stride; order checked per "
		       "connection)\n", b->npubs);
	if (c->burst_path)
		printf("  burst: one POST %s; the server published the %u events itself "
		       "(latency counts from that POST)\n", c->burst_path, c->events);
	if (c->payload_fields)
		printf("  payload: {%s,\"seq\":N,\"ts\":T} (%zu bytes at most)\n",
		       c->payload_fields, pub->max_body);
	printf("  publish answers: subscribers reported min %lld max %lld\n",
	       pub->subs_min, pub->subs_max);
	if (c->rate > 0 && pub->next_seq > 1 && pub_rate < 0.95 * c->rate)
		printf("  warning: publishing fell behind the target rate (at most %u publish%s "
		       "in flight);\n           the figures below hold for %.1f events/s\n",
		       pc.inflight, pc.inflight == 1 ? ", waiting for each answer," : "es",
		       pub_rate);
	print_hist_line("publish answer latency (sent -> read by loadgen)", &pub->lat);
	if (c->rx_timestamps)
		print_hist_line("publish answer latency (sent -> kernel receive stamp)",
				&pub->lat_arrival);
	if (c->rate > 0)
		print_hist_line("publish schedule lag (sent - scheduled)", &pub->lag);
	printf("  delivery: %" PRIu64 " events received, %" PRIu64 " expected "
	       "(opened streams x accepted events)\n", b->events_received, expected);
	printf("  integrity: missing %" PRIu64 " (in %" PRIu64 " streams), duplicated %" PRIu64
	       ", out of order %" PRIu64 ", unparseable %" PRIu64 ", without id %" PRIu64
	       ", id not above the previous %" PRIu64 ", comments/heartbeats %" PRIu64 "\n",
	       missing, streams_missing, dup, ooo, bad, no_id, id_back, comments);
	print_hist_line("delivery latency (publish -> read by loadgen)", &b->lat);
	if (b->npaths > 1) {
		for (unsigned p = 0; p < b->npaths; p++) {
			const struct path_stats *ps = &b->paths[p];
			printf("    %s: %u streams, %" PRIu64 " events received, %" PRIu64
			       " missing; latency p50 %.3f ms p99 %.3f ms\n", ps->path, ps->subs,
			       ps->received, ps->missing, ns_to_ms(hist_quantile(&ps->lat, 0.50)),
			       ns_to_ms(hist_quantile(&ps->lat, 0.99)));
		}
	}
	if (c->rx_timestamps) {
		print_hist_line("arrival latency (publish -> kernel receive stamp)", &b->arrival_lat);
		if (b->no_arrival)
			printf("  note: %" PRIu64 " events had no kernel timestamp\n", b->no_arrival);
		if (clock_drift > 1000000 || clock_drift < -1000000)
			printf("  warning: realtime clock moved %.3f ms against monotonic during "
			       "the run; arrival latency is off by up to that\n",
			       (double)clock_drift / 1e6);
	}
	printf("  deliveries/s: %.0f (events received / first publish -> last receive, %.3f s)\n",
	       deliveries_per_s, (double)span / 1e9);
	printf("  run: %.2f s total, waited %.2f s after the last publish (max %.1f s)\n",
	       (double)(t_end - t0) / 1e9,
	       pub->last_send && t_end > pub->last_send ? (double)(t_end - pub->last_send) / 1e9 : 0,
	       c->wait_s);
	print_cpu("publishing and waiting", server_cpu, self_cpu, c->spin);
	if (cpu_us_per_event >= 0)
		printf("  server CPU per published event: %.1f us (user+system while publishing and "
		       "waiting / accepted events; includes the fan-out)\n", cpu_us_per_event);
	if (nalso_pids)
		printf("  (server CPU: the sum of pid %ld and %u more server process%s)\n",
		       c->server_pid, nalso_pids, nalso_pids > 1 ? "es" : "");
	if (aux_cpu_us_per_event >= 0)
		printf("  aux process (pid %ld) CPU: %.0f%% of one core, %.1f us per published "
		       "event\n", c->aux_pid, aux_cpu_pct, aux_cpu_us_per_event);
	if (rss_before >= 0)
		printf("  server RSS: %ld KiB before, %ld KiB with streams open, %ld KiB at end\n",
		       rss_before, rss_open, rss_end);

	int ok = ready == b->nsubs && open_errors == 0 && missing == 0 && dup == 0 &&
		 ooo == 0 && bad == 0 && id_back == 0 && b->drops == 0 && pub->failed == 0 &&
		 pub->ok == c->events && !gave_up;
	printf("RESULT mode=fanout ok=%d subs=%u opened=%u events=%u rate=%g pub_ok=%" PRIu64
	       " pub_failed=%" PRIu64 " received=%" PRIu64 " expected=%" PRIu64
	       " missing=%" PRIu64 " dup=%" PRIu64 " ooo=%" PRIu64 " bad=%" PRIu64
	       " no_id=%" PRIu64 " id_back=%" PRIu64 " drops=%" PRIu64 " errors=%" PRIu64
	       " pub_conns=%u",
	       ok, b->nsubs, ready, c->events, c->rate, pub->ok, pub->failed,
	       b->events_received, expected, missing, dup, ooo, bad, no_id, id_back, b->drops,
	       open_errors, b->npubs);
	result_hist("lat", &b->lat);
	if (c->rx_timestamps)
		result_hist("arrival", &b->arrival_lat);
	printf(" deliveries_per_s=%.0f pub_rate=%.1f", deliveries_per_s, pub_rate);
	result_hist("pub", &pub->lat);
	if (c->rx_timestamps)
		result_hist("pub_arrival", &pub->lat_arrival);
	if (c->rate > 0)
		result_hist("pub_lag", &pub->lag);
	printf(" open_s=%.3f rss_before_kib=%ld rss_end_kib=%ld server_cpu_pct=%.0f"
	       " loadgen_cpu_pct=%.0f server_cpu_us_per_event=%.1f",
	       (double)(t_open - t0) / 1e9, rss_before, rss_end, server_cpu, self_cpu,
	       cpu_us_per_event);
	if (aux_cpu_us_per_event >= 0)
		printf(" aux_cpu_pct=%.0f aux_cpu_us_per_event=%.1f", aux_cpu_pct,
		       aux_cpu_us_per_event);
	printf("\n");
	for (unsigned p = 0; p < b->npubs; p++)
		pub_free(&b->pubs[p]);
	free(b->pubs);
	b->pubs = NULL;
	free(class_next);
	free(bits);
	return ok ? 0 : 1;
}

static int run_idle(struct bench *b)
{
	const struct config *c = &b->cfg;
	setup_streams(b, c->subs);
	uint64_t t0 = now_ns();
	uint64_t hard_deadline = t0 + secs_to_ns(c->max_time_s);
	long rss_before = c->server_pid > 0 ? read_rss_kib(c->server_pid) : -1;
	if (c->server_pid > 0 && rss_before < 0)
		die("cannot read VmRSS of pid %ld", c->server_pid);

	uint64_t connect_deadline = t0 + secs_to_ns(c->connect_timeout_s);
	open_all(b, connect_deadline < hard_deadline ? connect_deadline : hard_deadline);
	uint64_t t_open = now_ns();
	unsigned ready = b->ready;

	/* let the server finish whatever it does per stream before measuring */
	uint64_t settle_end = t_open + secs_to_ns(c->settle_s);
	pump_until(b, settle_end < hard_deadline ? settle_end : hard_deadline);
	long rss_after = c->server_pid > 0 ? read_rss_kib(c->server_pid) : -1;
	unsigned open_after_settle = count_open(b);

	uint64_t hold_end = now_ns() + secs_to_ns(c->hold_s);
	pump_until(b, hold_end < hard_deadline ? hold_end : hard_deadline);
	unsigned open_at_end = count_open(b);
	uint64_t comments = 0;
	for (unsigned i = 0; i < b->nsubs; i++)
		comments += b->subs[i].comments;

	print_target(b, "idle");
	printf("  streams: %u requested, %u opened in %.2f s (concurrency %u); "
	       "%u open after settle (%.1f s), %u open after hold (%.1f s)\n",
	       b->nsubs, ready, (double)(t_open - t0) / 1e9, c->connect_concurrency,
	       open_after_settle, c->settle_s, open_at_end, c->hold_s);
	print_errors(b);
	printf("  comments/heartbeats received: %" PRIu64 "\n", comments);
	double per_stream = 0;
	if (rss_before >= 0 && rss_after >= 0) {
		long delta = rss_after - rss_before;
		per_stream = open_after_settle ? (double)delta * 1024.0 / open_after_settle : 0;
		printf("  server RSS: %ld KiB before, %ld KiB with %u streams open, delta %ld KiB\n",
		       rss_before, rss_after, open_after_settle, delta);
		printf("  RSS per idle stream: %.0f bytes (%.2f KiB)\n", per_stream,
		       per_stream / 1024.0);
	} else {
		printf("  server RSS: not measured (pass --server-pid)\n");
	}
	uint64_t open_errors = total_errors(b);
	int ok = ready == b->nsubs && open_errors == 0 && open_at_end == ready;
	printf("RESULT mode=idle ok=%d subs=%u opened=%u open_at_end=%u errors=%" PRIu64
	       " drops=%" PRIu64 " open_s=%.3f rss_before_kib=%ld rss_after_kib=%ld"
	       " rss_per_stream_bytes=%.0f\n",
	       ok, b->nsubs, ready, open_at_end, open_errors, b->drops,
	       (double)(t_open - t0) / 1e9, rss_before, rss_after, per_stream);
	return ok ? 0 : 1;
}

static int run_churn(struct bench *b)
{
	const struct config *c = &b->cfg;
	setup_streams(b, c->churn_concurrency);
	uint64_t t0 = now_ns();
	uint64_t end = t0 + secs_to_ns(c->duration_s);
	uint64_t hard_deadline = t0 + secs_to_ns(c->max_time_s);
	if (end > hard_deadline)
		end = hard_deadline;
	uint64_t attempt_ns = secs_to_ns(c->attempt_timeout_s);

	struct cpu_window cpu;
	cpu_window_start(&cpu, c->server_pid);
	for (unsigned i = 0; i < b->nsubs; i++)
		sub_start(b, &b->subs[i]);
	uint64_t t = now_ns();
	int gave_up = 0;
	uint64_t done_seen = 0, errors_at_progress = 0;
	while (t < end) {
		dispatch(b, ms_until(end, t, 50));
		t = now_ns();
		for (unsigned i = 0; i < b->nsubs; i++) {
			struct sub *s = &b->subs[i];
			if (s->phase >= SUB_CONNECTING && s->phase <= SUB_OPEN &&
			    t - s->t_start > attempt_ns)
				sub_fail(b, s, ERR_TIMEOUT);
			if (s->phase == SUB_CLOSED && t < end)
				sub_start(b, s);
		}
		uint64_t errors = total_errors(b);
		if (b->churn_done != done_seen) {
			done_seen = b->churn_done;
			errors_at_progress = errors;
		} else if (errors - errors_at_progress >= CHURN_GIVE_UP_ERRORS) {
			gave_up = 1;
			break;	/* only failures lately (server gone?): stop hammering */
		}
	}
	uint64_t t_end = now_ns();
	double server_cpu, self_cpu;
	long long server_ns = cpu_window_server_ns(&cpu, c->server_pid);
	cpu_window_end(&cpu, c->server_pid, &server_cpu, &self_cpu);
	/* Server CPU time per subscription: what one core could sustain if the
	 * generator (whose core also does the server's side of every TCP
	 * handshake on loopback) were not the limit. An estimate, not a rate. */
	double cpu_us_per_sub = server_ns >= 0 && b->churn_done > 0
		? (double)server_ns / 1e3 / (double)b->churn_done : -1;
	unsigned abandoned = 0;
	for (unsigned i = 0; i < b->nsubs; i++) {
		if (b->subs[i].phase != SUB_CLOSED && b->subs[i].phase != SUB_UNUSED) {
			abandoned++;
			sub_close(b, &b->subs[i]);
		}
	}
	double secs = (double)(t_end - t0) / 1e9;
	double per_s = secs > 0 ? (double)b->churn_done / secs : 0;
	uint64_t errors = total_errors(b);

	print_target(b, "churn");
	printf("  %.2f s, %u in flight: %" PRIu64 " subscriptions completed "
	       "(200 + first chunk, then closed), %u cut off at the end%s\n",
	       secs, c->churn_concurrency, b->churn_done, abandoned,
	       gave_up ? " (gave up: only errors lately)" : "");
	printf("  subscriptions/s: %.0f\n", per_s);
	print_errors(b);
	print_hist_line("open latency (connect -> first chunk)", &b->open_lat);
	print_cpu("the run", server_cpu, self_cpu, 0);
	if (cpu_us_per_sub > 0)
		printf("  server CPU per subscription: %.1f us (user+system / completed), i.e. "
		       "%.0f/s if it had a whole core\n", cpu_us_per_sub, 1e6 / cpu_us_per_sub);
	int ok = b->churn_done > 0 && errors == 0;
	printf("RESULT mode=churn ok=%d auth=%d concurrency=%u duration_s=%.2f completed=%" PRIu64
	       " subs_per_s=%.0f errors=%" PRIu64,
	       ok, c->auth, c->churn_concurrency, secs, b->churn_done, per_s, errors);
	for (int k = 0; k < ERR_KINDS; k++)
		printf(" err_%s=%" PRIu64, error_names[k], b->errors[k]);
	result_hist("open", &b->open_lat);
	printf(" server_cpu_pct=%.0f loadgen_cpu_pct=%.0f server_cpu_us_per_sub=%.1f\n",
	       server_cpu, self_cpu, cpu_us_per_sub);
	return ok ? 0 : 1;
}

/* CPU use over exactly the counted window of the http mode */
struct window_cpu {
	long server_pid;
	struct cpu_window w;
	double server_pct;
	double self_pct;
	long long server_ns;	/* server CPU time in the window, -1 unknown */
	int done;
};

static void on_http_window(void *ctx, int end)
{
	struct window_cpu *wc = ctx;
	if (!end) {
		cpu_window_start(&wc->w, wc->server_pid);
		return;
	}
	long long server1 = server_cpu_ns(wc->server_pid);
	cpu_window_end(&wc->w, wc->server_pid, &wc->server_pct, &wc->self_pct);
	wc->server_ns = (server1 >= 0 && wc->w.server0 >= 0) ? server1 - wc->w.server0 : -1;
	wc->done = 1;
}

static int run_http(struct bench *b)
{
	const struct config *c = &b->cfg;
	struct window_cpu wc = { .server_pid = c->server_pid, .server_pct = -1, .self_pct = -1,
				 .server_ns = -1 };
	struct reqload_config rc = {
		.dst = c->dst, .host = c->host, .port = c->port, .path = c->path,
		.conns = c->conns, .pipeline = c->pipeline, .warmup_s = c->warmup_s,
		.duration_s = c->duration_s, .expect = c->expect, .src_addrs = c->src_addrs,
		.verbose = c->verbose, .on_window = on_http_window, .window_ctx = &wc,
	};
	static struct reqload_result r;
	uint64_t hard_deadline = now_ns() + secs_to_ns(c->max_time_s);
	if (reqload_run(&rc, &r, hard_deadline) != 0)
		die("out of memory for %u connections", c->conns);
	double server_cpu = wc.server_pct, self_cpu = wc.self_pct;
	/* CPU time per answer holds up better than requests/s when other work
	 * takes turns on the server's core: stolen time is not in it */
	double cpu_us_per_req = wc.server_ns >= 0 && r.ok + r.non2xx > 0
		? (double)wc.server_ns / 1e3 / (double)(r.ok + r.non2xx) : -1;
	uint64_t errors = 0;
	for (int k = 0; k < REQ_ERR_KINDS; k++)
		errors += r.errors[k];
	double rps = r.secs > 0 ? (double)r.ok / r.secs : 0;

	printf("loadgen http: target %s:%d  GET %s  %u keep-alive connections, pipeline %u, "
	       "source addresses 127.0.0.1-%u\n", c->host, c->port, c->path, c->conns,
	       c->pipeline, c->src_addrs);
	printf("  %.1f s warm-up (%" PRIu64 " answers, not counted), then %.2f s counted\n",
	       c->warmup_s, r.warmup_done, r.secs);
	printf("  answers: %" PRIu64 " 2xx, %" PRIu64 " other status%s", r.ok, r.non2xx,
	       r.last_status ? "" : "\n");
	if (r.last_status)
		printf(" (last %d)\n", r.last_status);
	if (c->expect)
		printf("  2xx bodies without %s: %" PRIu64 "\n", c->expect, r.bad_body);
	printf("  requests/s: %.0f (2xx answers / counted time); %.0f bytes of body per answer\n",
	       rps, r.ok ? (double)r.body_bytes / (double)r.ok : 0.0);
	printf("  errors: %" PRIu64 " (", errors);
	for (int k = 0; k < REQ_ERR_KINDS; k++)
		printf("%s%s %" PRIu64, k ? ", " : "", reqload_error_names[k], r.errors[k]);
	printf(")%s%s; %" PRIu64 " requests lost on broken connections, %" PRIu64
	       " reconnects, %" PRIu64 " in flight at the end (cut off)\n",
	       r.last_errno ? " last errno: " : "", r.last_errno ? strerror(r.last_errno) : "",
	       r.lost, r.reconnects, r.cut_off);
	print_hist_line("request latency (written -> whole answer read)", &r.lat);
	print_cpu("the counted time", server_cpu, self_cpu, 0);
	if (cpu_us_per_req >= 0)
		printf("  server CPU per answer: %.1f us (user+system time in the counted window "
		       "/ answers)\n", cpu_us_per_req);
	int ok = r.ok > 0 && r.non2xx == 0 && r.bad_body == 0 && errors == 0;
	printf("RESULT mode=http ok=%d conns=%u pipeline=%u duration_s=%.2f requests=%" PRIu64
	       " rps=%.0f non2xx=%" PRIu64 " bad_body=%" PRIu64 " errors=%" PRIu64
	       " lost=%" PRIu64, ok, c->conns, c->pipeline, r.secs, r.ok, rps, r.non2xx,
	       r.bad_body, errors, r.lost);
	result_hist("lat", &r.lat);
	printf(" server_cpu_pct=%.0f loadgen_cpu_pct=%.0f server_cpu_us_per_req=%.2f\n", server_cpu,
	       self_cpu, cpu_us_per_req);
	return ok ? 0 : 1;
}

/* GET --path once; the body goes to stdout. */
static int run_get(const struct config *c)
{
	static char body[1 << 20];
	size_t len = 0;
	int fd = -1;
	int status = req_get(&c->dst, c->host, c->port, c->path, &fd, body, sizeof body, &len,
			     now_ns() + secs_to_ns(c->timeout_s));
	if (fd >= 0)
		close_fd(fd);
	if (status < 0) {
		fprintf(stderr, "loadgen: GET %s: %s\n", c->path, strerror(errno));
		return 1;
	}
	if (fwrite(body, 1, strlen(body), stdout) != strlen(body))
		die("stdout: %s", strerror(errno));
	if (status < 200 || status > 299) {
		fprintf(stderr, "loadgen: GET %s answered %d\n", c->path, status);
		return 1;
	}
	return 0;
}

/* Sends SIGHUP to --server-pid, then GETs --path over one keep-alive
 * connection until the body contains --expect: the time from the signal to
 * the reloaded script answering. The connection is opened (and used once)
 * before the signal, so connecting is not part of the figure. */
static int run_hup_wait(const struct config *c)
{
	static char body[REQ_IN_MAX];
	size_t len = 0;
	int fd = -1;
	uint64_t deadline = now_ns() + secs_to_ns(c->timeout_s);
	int status = req_get(&c->dst, c->host, c->port, c->path, &fd, body, sizeof body, &len,
			     deadline);
	if (status < 0) {
		fprintf(stderr, "loadgen: GET %s before the signal: %s\n", c->path, strerror(errno));
		return 2;
	}
	if (strstr(body, c->expect)) {
		fprintf(stderr, "loadgen: GET %s already shows \"%s\" before the reload\n", c->path,
			c->expect);
		if (fd >= 0)
			close_fd(fd);
		return 2;
	}
	uint64_t t0 = now_ns();
	if (kill((pid_t)c->server_pid, SIGHUP) != 0)
		die("kill(%ld, SIGHUP): %s", c->server_pid, strerror(errno));
	unsigned polls = 0, failures = 0;
	int seen = 0;
	uint64_t t1 = t0;
	while (now_ns() < deadline && polls < 1000000 && failures < 100) {
		polls++;
		status = req_get(&c->dst, c->host, c->port, c->path, &fd, body, sizeof body, &len,
				 deadline);
		if (status < 0) {
			failures++;	/* fd was closed; the next call reconnects */
			continue;
		}
		if (status >= 200 && status < 300 && strstr(body, c->expect)) {
			t1 = now_ns();
			seen = 1;
			break;
		}
	}
	if (fd >= 0)
		close_fd(fd);
	if (!seen) {
		fprintf(stderr, "loadgen: \"%s\" not seen at %s within %.1f s of SIGHUP "
			"(%u polls, %u failed; last status %d)\n", c->expect, c->path, c->timeout_s,
			polls, failures, status);
		printf("RESULT mode=hup-wait ok=0 polls=%u failures=%u\n", polls, failures);
		return 1;
	}
	printf("RESULT mode=hup-wait ok=1 visible_us=%.0f polls=%u failures=%u\n",
	       (double)(t1 - t0) / 1e3, polls, failures);
	return 0;
}

static int run_wait_listen(const struct config *c)
{
	uint64_t deadline = now_ns() + secs_to_ns(c->connect_timeout_s);
	for (unsigned attempt = 0; attempt < 100000 && now_ns() < deadline; attempt++) {
		int fd = net_connect_from(&c->dst, 0, 0);
		if (fd < 0)
			die("socket: %s", strerror(-fd));
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		int n = poll(&pfd, 1, 200);
		if (n < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		int err = n > 0 ? net_connect_result(fd) : ETIMEDOUT;
		close_fd(fd);
		if (err == 0)
			return 0;
		struct timespec pause = { .tv_sec = 0, .tv_nsec = 50 * 1000 * 1000 };
		if (nanosleep(&pause, NULL) != 0 && errno != EINTR)
			die("nanosleep: %s", strerror(errno));
	}
	fprintf(stderr, "loadgen: nothing listening on %s:%d after %.1f s\n", c->host,
		c->port, c->connect_timeout_s);
	return 1;
}

/* ---- command line ------------------------------------------------------- */

static void usage(FILE *f)
{
	fputs(
"usage: loadgen --mode MODE --port PORT [options]\n"
"\n"
"Load generator for sluice. Talks HTTP/1.1 to 127.0.0.0/8 only.\n"
"\n"
"modes:\n"
"  fanout       --subs N streams on /sub/CHANNEL, then POST --events M to\n"
"               /pub/CHANNEL at --rate R/s; checks every stream got every\n"
"               accepted event once and in order; latency percentiles\n"
"  idle         open --subs N streams, measure server VmRSS (--server-pid)\n"
"               before and after; print RSS per idle stream\n"
"  churn        for --duration S, open a stream, wait for 200 + first chunk,\n"
"               close it; --concurrency C in flight; subscriptions/s\n"
"  http         --conns N keep-alive connections GET --path for --warmup S\n"
"               then --duration S; requests/s and latency (2xx counted)\n"
"  get          GET --path once, print the body (exit 1 unless 2xx)\n"
"  hup-wait     send SIGHUP to --server-pid, then GET --path until the body\n"
"               contains --expect; prints the time from the signal\n"
"  free-port    print a TCP port free on 127.0.0.1 and exit\n"
"  wait-listen  exit 0 once PORT accepts connections (up to --connect-timeout)\n"
"\n"
"target:\n"
"  --host ADDR              server address, must be in 127.0.0.0/8 (127.0.0.1)\n"
"  --port PORT              server port (required except for free-port)\n"
"  --channel NAME           channel, [A-Za-z0-9._-] (bench)\n"
"  --auth                   subscribe via /sub-auth/CHANNEL?token=TOKEN\n"
"  --token TOKEN            token for --auth (let-me-in)\n"
"  --src-addrs K            spread client sockets over 127.0.0.1..127.0.0.K (254);\n"
"                           0: no bind(), the kernel picks (2 system calls fewer\n"
"                           per connection; fine while closed connections leave\n"
"                           no TIME_WAIT on this side, as sluice's streams do)\n"
"  --sub-port PORT          open the streams on PORT instead of --port (publishes\n"
"                           still go to --port); repeat it (up to 8) to spread\n"
"                           the streams round-robin over several servers\n"
"  --sub-path PATH          subscribe on PATH instead of /sub/CHANNEL; repeat it\n"
"                           (up to 8) to spread the streams round-robin over\n"
"                           several paths, e.g. one per view\n"
"\n"
"streams:\n"
"  --subs N                 streams for fanout/idle (100)\n"
"  --connect-concurrency C  streams being opened at once (256)\n"
"  --connect-timeout S      all streams must be open within S seconds (60)\n"
"\n"
"fanout:\n"
"  --events M               events to publish (100)\n"
"  --rate R                 events per second; 0 = next one as soon as the\n"
"                           previous is answered (100)\n"
"  --payload-size B         pad each event's data to at least B bytes (0)\n"
"  --payload-fields JSON    extra members for every event, before seq and ts:\n"
"                           '\"user\":\"u-1\",\"card\":\"4111\"' (printable ASCII)\n"
"  --pub-inflight D         publish requests outstanding at once; 1 = wait for\n"
"                           each answer, >1 = HTTP/1.1 pipelining (1)\n"
"  --pub-conns N            publishing connections (1); connection k sends seqs\n"
"                           k, k+N, ... at R/N per second, each with up to D in\n"
"                           flight; order is checked per connection\n"
"  --burst-path PATH        instead of publishing: ONE POST to PATH with body\n"
"                           \"M TS\" (TS: the send time, monotonic ns); the server\n"
"                           publishes {\"seq\":0..M-1,\"ts\":TS} itself (bench.lua's\n"
"                           /burst/CHANNEL); latency counts from that POST\n"
"  --pub-timeout S          stop publishing if an answer takes over S s (10)\n"
"  --no-rx-timestamps       do not ask the kernel for receive timestamps\n"
"  --spin                   fanout: poll the streams without ever sleeping. On\n"
"                           loopback each write wakes a sleeping reader on the\n"
"                           server's core (an inter-processor interrupt); with\n"
"                           remote clients that cost would not be the server's.\n"
"                           Spinning keeps it out of the server's figures.\n"
"  --wait S                 after the last publish answer, wait at most S s for\n"
"                           stragglers (5)\n"
"\n"
"idle:\n"
"  --server-pid PID         server process for VmRSS (also reported by fanout)\n"
"  --also-pid PID           fanout, churn, http: another server process (a second\n"
"                           node), its CPU added to the server's (up to 4)\n"
"  --aux-pid PID            fanout: a helper process (Redis), its CPU reported\n"
"                           apart (aux_cpu_us_per_event)\n"
"  --settle S               after all streams are open, wait S s, then read RSS (1)\n"
"  --hold S                 then keep the streams open S s more and check none\n"
"                           was dropped (0)\n"
"\n"
"churn:\n"
"  --duration S             seconds to run (5)\n"
"  --concurrency C          subscriptions in flight (64)\n"
"  --attempt-timeout S      one subscription attempt may take S s (5)\n"
"\n"
"http, get, hup-wait:\n"
"  --path PATH              request target, e.g. /work?name=x (/)\n"
"  --conns N                keep-alive connections (32)\n"
"  --pipeline D             requests outstanding per connection (1)\n"
"  --warmup S               run S seconds before counting (1)\n"
"  --duration S             seconds counted (5)\n"
"  --expect TEXT            http: every 2xx body must contain TEXT;\n"
"                           hup-wait: the text that shows the reload happened\n"
"  --timeout S              get, hup-wait: give up after S seconds (10)\n"
"\n"
"general:\n"
"  --max-time S             hard stop for the whole run (900)\n"
"  --verbose                progress and first errors on stderr\n"
"  --help\n"
"\n"
"Event payload (the POST body, verbatim the SSE data): {\"seq\":N,\"ts\":T}\n"
"with N = 0..M-1 and T = CLOCK_MONOTONIC in ns when the request was sent.\n"
"Received data may be re-encoded (masked views): seq and ts are found at the\n"
"top level of the JSON in any order, in data of any length.\n"
"Delivery latency = receive time (CLOCK_MONOTONIC right after read()) - T.\n"
"Arrival latency = kernel receive timestamp (SO_TIMESTAMPNS) of that read - T:\n"
"the same without the load generator's own reading delay.\n"
"\n"
"Output: human-readable figures, then one line 'RESULT key=value ...'.\n"
"Exit status: 0 ok, 1 the run found errors (see ok=0), 2 usage/setup error.\n",
	      f);
}

static double parse_double(const char *opt, const char *s, double lo, double hi)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || v < lo || v > hi)
		die("%s: expected a number in [%g, %g], got '%s'", opt, lo, hi, s);
	return v;
}

static unsigned parse_uint(const char *opt, const char *s, unsigned lo, unsigned hi)
{
	return (unsigned)parse_double(opt, s, lo, hi);
}

/* A request target we can put on the request line as is. */
static void check_path(const char *opt, const char *p)
{
	size_t n = strlen(p);
	if (n == 0 || n > MAX_PATH_LEN || p[0] != '/')
		die("%s: must start with / and be at most %d characters", opt, MAX_PATH_LEN);
	for (size_t i = 0; i < n; i++)
		if (p[i] <= ' ' || p[i] > '~' || p[i] == '#')
			die("%s: printable ASCII without spaces or '#' only (URL-encode the rest)", opt);
}

/* The extra members must keep the payload one line of JSON in which seq
 * and ts are still found: checked by scanning a sample event. */
static void check_payload_fields(const char *f)
{
	size_t n = strlen(f);
	if (n == 0 || n > MAX_PAYLOAD_FIELDS)
		die("--payload-fields: 1..%d characters", MAX_PAYLOAD_FIELDS);
	for (size_t i = 0; i < n; i++)
		if (f[i] < ' ' || f[i] > '~')
			die("--payload-fields: printable ASCII only (one line of JSON)");
	static char sample[MAX_PAYLOAD_FIELDS + 64];
	int sl = snprintf(sample, sizeof sample, "{%s,\"seq\":12,\"ts\":34}", f);
	uint64_t seq, ts;
	if (sl < 0 || sp_parse_payload(sample, (size_t)sl, &seq, &ts) != 0 || seq != 12 ||
	    ts != 34)
		die("--payload-fields: '%s' does not make {...,\"seq\":N,\"ts\":T} a JSON object "
		    "whose seq and ts are found (members separated by commas, no seq/ts of "
		    "its own, balanced brackets and quotes)", f);
}

static void parse_args(struct config *c, int argc, char **argv)
{
	enum {
		O_MODE = 256, O_HOST, O_PORT, O_CHANNEL, O_AUTH, O_TOKEN, O_SRC, O_SUBS,
		O_CCONC, O_CTIMEOUT, O_EVENTS, O_RATE, O_PAYLOAD, O_WAIT, O_PID, O_SETTLE,
		O_HOLD, O_DURATION, O_CONC, O_ATIMEOUT, O_MAXTIME, O_VERBOSE, O_HELP,
		O_INFLIGHT, O_PUB_CONNS, O_BURST_PATH, O_NO_RXTS, O_SPIN, O_PUB_TIMEOUT, O_SUB_PATH, O_FIELDS, O_PATH, O_CONNS,
		O_PIPELINE, O_WARMUP, O_EXPECT, O_TIMEOUT, O_SUB_PORT, O_ALSO_PID, O_AUX_PID,
	};
	static const struct option opts[] = {
		{ "mode", required_argument, NULL, O_MODE },
		{ "host", required_argument, NULL, O_HOST },
		{ "port", required_argument, NULL, O_PORT },
		{ "channel", required_argument, NULL, O_CHANNEL },
		{ "auth", no_argument, NULL, O_AUTH },
		{ "token", required_argument, NULL, O_TOKEN },
		{ "src-addrs", required_argument, NULL, O_SRC },
		{ "subs", required_argument, NULL, O_SUBS },
		{ "connect-concurrency", required_argument, NULL, O_CCONC },
		{ "connect-timeout", required_argument, NULL, O_CTIMEOUT },
		{ "events", required_argument, NULL, O_EVENTS },
		{ "rate", required_argument, NULL, O_RATE },
		{ "payload-size", required_argument, NULL, O_PAYLOAD },
		{ "pub-inflight", required_argument, NULL, O_INFLIGHT },
		{ "pub-conns", required_argument, NULL, O_PUB_CONNS },
		{ "burst-path", required_argument, NULL, O_BURST_PATH },
		{ "no-rx-timestamps", no_argument, NULL, O_NO_RXTS },
		{ "spin", no_argument, NULL, O_SPIN },
		{ "pub-timeout", required_argument, NULL, O_PUB_TIMEOUT },
		{ "wait", required_argument, NULL, O_WAIT },
		{ "server-pid", required_argument, NULL, O_PID },
		{ "settle", required_argument, NULL, O_SETTLE },
		{ "hold", required_argument, NULL, O_HOLD },
		{ "duration", required_argument, NULL, O_DURATION },
		{ "concurrency", required_argument, NULL, O_CONC },
		{ "attempt-timeout", required_argument, NULL, O_ATIMEOUT },
		{ "max-time", required_argument, NULL, O_MAXTIME },
		{ "verbose", no_argument, NULL, O_VERBOSE },
		{ "help", no_argument, NULL, O_HELP },
		{ "sub-path", required_argument, NULL, O_SUB_PATH },
		{ "payload-fields", required_argument, NULL, O_FIELDS },
		{ "path", required_argument, NULL, O_PATH },
		{ "conns", required_argument, NULL, O_CONNS },
		{ "pipeline", required_argument, NULL, O_PIPELINE },
		{ "warmup", required_argument, NULL, O_WARMUP },
		{ "expect", required_argument, NULL, O_EXPECT },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "sub-port", required_argument, NULL, O_SUB_PORT },
		{ "also-pid", required_argument, NULL, O_ALSO_PID },
		{ "aux-pid", required_argument, NULL, O_AUX_PID },
		{ NULL, 0, NULL, 0 },
	};
	*c = (struct config){
		.mode = MODE_FANOUT, .port = -1, .channel = "bench", .token = "let-me-in",
		.subs = 100, .events = 100, .rate = 100, .pub_inflight = 1, .pub_conns = 1,
		.rx_timestamps = 1, .connect_concurrency = 256,
		.connect_timeout_s = 60, .wait_s = 5, .pub_timeout_s = 10, .duration_s = 5,
		.churn_concurrency = 64, .attempt_timeout_s = 5, .settle_s = 1,
		.hold_s = 0, .max_time_s = 900, .server_pid = -1, .src_addrs = 254,
		.path = "/", .conns = 32, .pipeline = 1, .warmup_s = 1, .timeout_s = 10,
	};
	snprintf(c->host, sizeof c->host, "127.0.0.1");
	const char *mode = "fanout";
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case O_MODE: mode = optarg; break;
		case O_HOST:
			if (strlen(optarg) >= sizeof c->host)
				die("--host too long");
			snprintf(c->host, sizeof c->host, "%s", optarg);
			break;
		case O_PORT: c->port = (int)parse_uint("--port", optarg, 1, 65535); break;
		case O_CHANNEL: c->channel = optarg; break;
		case O_AUTH: c->auth = 1; break;
		case O_TOKEN: c->token = optarg; break;
		case O_SRC: c->src_addrs = parse_uint("--src-addrs", optarg, 0, 254); break;
		case O_SUBS: c->subs = parse_uint("--subs", optarg, 0, 1000000); break;
		case O_CCONC:
			c->connect_concurrency = parse_uint("--connect-concurrency", optarg, 1, 100000);
			break;
		case O_CTIMEOUT:
			c->connect_timeout_s = parse_double("--connect-timeout", optarg, 0.1, 3600);
			break;
		case O_EVENTS: c->events = parse_uint("--events", optarg, 0, 100000000); break;
		case O_RATE: c->rate = parse_double("--rate", optarg, 0, 1e7); break;
		case O_PUB_CONNS:
			c->pub_conns = parse_uint("--pub-conns", optarg, 1, MAX_PUB_CONNS);
			break;
		case O_BURST_PATH:
			c->burst_path = optarg;
			break;
		case O_INFLIGHT:
			c->pub_inflight = parse_uint("--pub-inflight", optarg, 1, 100000);
			break;
		case O_NO_RXTS: c->rx_timestamps = 0; break;
		case O_SPIN: c->spin = 1; break;
		case O_PUB_TIMEOUT:
			c->pub_timeout_s = parse_double("--pub-timeout", optarg, 0.1, 3600);
			break;
		case O_PAYLOAD: c->payload_size = parse_uint("--payload-size", optarg, 0, 1 << 20); break;
		case O_WAIT: c->wait_s = parse_double("--wait", optarg, 0, 3600); break;
		case O_PID: c->server_pid = (long)parse_uint("--server-pid", optarg, 1, 1u << 30); break;
		case O_SETTLE: c->settle_s = parse_double("--settle", optarg, 0, 3600); break;
		case O_HOLD: c->hold_s = parse_double("--hold", optarg, 0, 3600); break;
		case O_DURATION: c->duration_s = parse_double("--duration", optarg, 0.1, 3600); break;
		case O_CONC: c->churn_concurrency = parse_uint("--concurrency", optarg, 1, 10000); break;
		case O_ATIMEOUT:
			c->attempt_timeout_s = parse_double("--attempt-timeout", optarg, 0.1, 3600);
			break;
		case O_MAXTIME: c->max_time_s = parse_double("--max-time", optarg, 1, 86400); break;
		case O_VERBOSE: c->verbose = 1; break;
		case O_SUB_PATH:
			if (c->nsub_paths >= MAX_SUB_PATHS)
				die("--sub-path: at most %d", MAX_SUB_PATHS);
			check_path("--sub-path", optarg);
			c->sub_paths[c->nsub_paths++] = optarg;
			break;
		case O_FIELDS: c->payload_fields = optarg; break;
		case O_PATH: check_path("--path", optarg); c->path = optarg; break;
		case O_CONNS: c->conns = parse_uint("--conns", optarg, 1, 100000); break;
		case O_PIPELINE: c->pipeline = parse_uint("--pipeline", optarg, 1, 1024); break;
		case O_WARMUP: c->warmup_s = parse_double("--warmup", optarg, 0, 3600); break;
		case O_EXPECT:
			if (!*optarg || strlen(optarg) > 200)
				die("--expect: 1..200 characters");
			c->expect = optarg;
			break;
		case O_TIMEOUT: c->timeout_s = parse_double("--timeout", optarg, 0.1, 3600); break;
		case O_SUB_PORT:
			if (c->nsub_ports >= MAX_SUB_PORTS)
				die("--sub-port: at most %d", MAX_SUB_PORTS);
			c->sub_ports[c->nsub_ports++] = (int)parse_uint("--sub-port", optarg, 1, 65535);
			break;
		case O_ALSO_PID:
			if (nalso_pids >= MAX_ALSO_PIDS)
				die("--also-pid: at most %d", MAX_ALSO_PIDS);
			also_pids[nalso_pids++] = (long)parse_uint("--also-pid", optarg, 1, 1u << 30);
			break;
		case O_AUX_PID: c->aux_pid = (long)parse_uint("--aux-pid", optarg, 1, 1u << 30); break;
		case O_HELP: usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
	}
	if (optind < argc)
		die("unexpected argument '%s' (see --help)", argv[optind]);
	if (strcmp(mode, "fanout") == 0) c->mode = MODE_FANOUT;
	else if (strcmp(mode, "idle") == 0) c->mode = MODE_IDLE;
	else if (strcmp(mode, "churn") == 0) {
		c->mode = MODE_CHURN;
		c->rx_timestamps = 0;	/* churn reports no arrival latency */
	}
	else if (strcmp(mode, "http") == 0) c->mode = MODE_HTTP;
	else if (strcmp(mode, "get") == 0) c->mode = MODE_GET;
	else if (strcmp(mode, "hup-wait") == 0) c->mode = MODE_HUP_WAIT;
	else if (strcmp(mode, "free-port") == 0) c->mode = MODE_FREE_PORT;
	else if (strcmp(mode, "wait-listen") == 0) c->mode = MODE_WAIT_LISTEN;
	else die("unknown --mode '%s' (see --help)", mode);

	struct in_addr addr;
	if (net_parse_loopback(c->host, &addr) != 0)
		die("--host %s: only IPv4 loopback addresses (127.0.0.0/8) are allowed", c->host);
	memset(&c->dst, 0, sizeof c->dst);
	c->dst.sin_family = AF_INET;
	c->dst.sin_addr = addr;
	if (c->mode != MODE_FREE_PORT) {
		if (c->port < 0)
			die("--port is required (see --help)");
		c->dst.sin_port = htons((uint16_t)c->port);
	}
	for (unsigned i = 0; i < c->nsub_ports; i++) {
		c->sub_dsts[i] = c->dst;
		c->sub_dsts[i].sin_port = htons((uint16_t)c->sub_ports[i]);
	}
	if (nalso_pids && c->server_pid <= 0)
		die("--also-pid needs --server-pid");
	size_t cl = strlen(c->channel);
	if (cl == 0 || cl > 100)
		die("--channel must be 1..100 characters");
	for (size_t i = 0; i < cl; i++) {
		char ch = c->channel[i];
		int okc = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			  (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
		if (!okc)
			die("--channel: only [A-Za-z0-9._-] (no URL encoding here)");
	}
	for (const char *t = c->token; *t; t++)
		if (*t <= ' ' || *t == '&' || *t == '#' || *t == '%' || *t > '~')
			die("--token: plain URL-safe characters only");
	if (strlen(c->token) > 200)
		die("--token too long");
	if (c->payload_fields)
		check_payload_fields(c->payload_fields);
	if (c->mode == MODE_HUP_WAIT && (c->server_pid <= 0 || !c->expect))
		die("hup-wait needs --server-pid and --expect");
}

int main(int argc, char **argv)
{
	static struct bench bench;
	struct bench *b = &bench;
	g_bench = b;
	parse_args(&b->cfg, argc, argv);
	const struct config *c = &b->cfg;

	if (c->mode == MODE_FREE_PORT) {
		int port = net_free_port((unsigned)getpid() ^ (unsigned)now_ns());
		if (port < 0)
			die("no free port on 127.0.0.1");
		printf("%d\n", port);
		return 0;
	}
	if (c->mode == MODE_WAIT_LISTEN)
		return run_wait_listen(c);
	if (c->mode == MODE_GET || c->mode == MODE_HUP_WAIT) {
		if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
			die("signal: %s", strerror(errno));
		int rc = c->mode == MODE_GET ? run_get(c) : run_hup_wait(c);
		if (fflush(stdout) != 0)
			die("stdout: %s", strerror(errno));
		return rc;
	}

	rlim_t soft, hard;
	if (net_raise_nofile(&soft, &hard) != 0)
		die("RLIMIT_NOFILE: %s", strerror(errno));
	unsigned need = (c->mode == MODE_CHURN ? c->churn_concurrency
			 : c->mode == MODE_HTTP ? c->conns : c->subs) + 16;
	if (soft < need)
		die("open files limit %llu is too low for %u sockets", (unsigned long long)soft, need);

	/* a closed peer must be an error we see, not a signal that kills us */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		die("signal: %s", strerror(errno));

	b->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (b->epfd < 0)
		die("epoll_create1: %s", strerror(errno));
	hist_init(&b->lat);
	hist_init(&b->arrival_lat);
	hist_init(&b->open_lat);

	b->npaths = c->nsub_paths ? c->nsub_paths : 1;
	for (unsigned p = 0; p < b->npaths; p++) {
		struct path_stats *ps = &b->paths[p];
		hist_init(&ps->lat);
		if (c->nsub_paths)
			snprintf(ps->path, sizeof ps->path, "%s", c->sub_paths[p]);
		else if (c->auth)
			snprintf(ps->path, sizeof ps->path, "/sub-auth/%s?token=%s", c->channel,
				 c->token);
		else
			snprintf(ps->path, sizeof ps->path, "/sub/%s", c->channel);
		int rl = snprintf(ps->req, sizeof ps->req,
				  "GET %s HTTP/1.1\r\nHost: %s:%d\r\n"
				  "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n",
				  ps->path, c->host, c->port);
		if (rl < 0 || (size_t)rl >= sizeof ps->req)
			die("request line too long");
		ps->req_len = (size_t)rl;
	}

	int rc;
	switch (c->mode) {
	case MODE_IDLE: rc = run_idle(b); break;
	case MODE_CHURN: rc = run_churn(b); break;
	case MODE_HTTP: rc = run_http(b); break;
	default: rc = run_fanout(b); break;
	}
	if (fflush(stdout) != 0)
		die("stdout: %s", strerror(errno));
	return rc;
}
