#define _GNU_SOURCE
#include "clock.h"
#include "reqload.h"

#include "net.h"
#include "stream_parse.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_MS 1000000ULL
#define MAX_EVENTS 512
/* a connection that keeps breaking is given up after this many reconnects */
#define MAX_RECONNECTS 100

const char *const reqload_error_names[REQ_ERR_KINDS] = { "connect", "protocol", "closed" };

static void fatal(const char *what)
{
	fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
	exit(2);
}

static int ms_until(uint64_t deadline, uint64_t now, int cap_ms)
{
	if (deadline <= now)
		return 0;
	uint64_t ms = (deadline - now + NS_PER_MS - 1) / NS_PER_MS;
	return ms > (uint64_t)cap_ms ? cap_ms : (int)ms;
}

static void close_fd(int fd)
{
	if (close(fd) != 0)
		fatal("close");
}

static int build_request(char *out, size_t cap, const char *host, int port, const char *path)
{
	int n = snprintf(out, cap, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: */*\r\n\r\n", path,
			 host, port);
	return (n < 0 || (size_t)n >= cap) ? -1 : n;
}

/* Parses one complete response at the start of buf. 1 = complete (*used
 * bytes, status and body set), 0 = incomplete, -1 = malformed or unusable
 * (chunked, close-delimited, larger than REQ_IN_MAX). */
static int parse_response(const char *buf, size_t len, int *status, const char **body,
			  size_t *body_len, size_t *used)
{
	struct sp_head h;
	size_t head_len;
	int hr = sp_parse_response_head(buf, len, &h, &head_len);
	if (hr == 0)
		return len >= REQ_IN_MAX ? -1 : 0;
	if (hr < 0 || h.chunked)
		return -1;
	size_t blen;
	if (h.content_length >= 0)
		blen = (size_t)h.content_length;
	else if (h.status == 204 || h.status == 304 || (h.status >= 100 && h.status < 200))
		blen = 0;
	else
		return -1;	/* close-delimited body: not a keep-alive answer */
	if (head_len + blen > REQ_IN_MAX)
		return -1;
	if (len < head_len + blen)
		return 0;
	*status = h.status;
	*body = buf + head_len;
	*body_len = blen;
	*used = head_len + blen;
	return 1;
}

/* ---- keep-alive load ---------------------------------------------------- */

enum { HC_IDLE, HC_CONNECTING, HC_OPEN, HC_GONE };

struct hconn {
	int fd;
	uint8_t phase;
	uint8_t want_out;	/* EPOLLOUT registered */
	unsigned index;
	unsigned inflight;	/* requests written (or being written), unanswered */
	unsigned q_head;	/* ring of send times, `pipeline` entries */
	uint64_t *t_send;
	size_t out_len;		/* the batch being written: a prefix of batch[] */
	size_t out_sent;
	char *in;
	size_t in_len;
	unsigned reconnects;
};

struct load {
	const struct reqload_config *c;
	struct reqload_result *r;
	int epfd;
	struct hconn *conns;
	char *batch;		/* the request, `pipeline` times */
	size_t req_len;
	unsigned next_src;
	uint64_t count_from;	/* answers completed from here on count */
	uint64_t count_to;
	int stopping;
};

static void hc_start(struct load *L, struct hconn *h);

static void hc_close(struct load *L, struct hconn *h)
{
	(void)L;
	if (h->fd >= 0)
		close_fd(h->fd);	/* also leaves the epoll set */
	h->fd = -1;
	h->inflight = 0;
	h->q_head = 0;
	h->out_len = h->out_sent = 0;
	h->in_len = 0;
	h->want_out = 0;
}

/* The connection broke: what it had in flight is lost; reconnect. */
static void hc_fail(struct load *L, struct hconn *h, int kind, int err)
{
	L->r->errors[kind]++;
	L->r->lost += h->inflight;
	if (err)
		L->r->last_errno = err;
	if (L->c->verbose && L->r->errors[kind] <= 5)
		fprintf(stderr, "loadgen: connection %u: %s error (%s)\n", h->index,
			reqload_error_names[kind], err ? strerror(err) : "-");
	hc_close(L, h);
	h->phase = HC_GONE;
	if (!L->stopping && h->reconnects < MAX_RECONNECTS) {
		h->reconnects++;
		L->r->reconnects++;
		hc_start(L, h);
	}
}

static void set_events(struct load *L, struct hconn *h, int want_out)
{
	if (h->want_out == want_out)
		return;
	struct epoll_event ev = { .events = EPOLLIN | (want_out ? EPOLLOUT : 0),
				  .data.u32 = h->index };
	if (epoll_ctl(L->epfd, EPOLL_CTL_MOD, h->fd, &ev) != 0)
		fatal("epoll_ctl MOD");
	h->want_out = (uint8_t)want_out;
}

static void hc_flush(struct load *L, struct hconn *h)
{
	while (h->out_sent < h->out_len) {
		ssize_t n = send(h->fd, L->batch + h->out_sent, h->out_len - h->out_sent,
				 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				set_events(L, h, 1);
				return;
			}
			hc_fail(L, h, REQ_ERR_CLOSED, errno);
			return;
		}
		h->out_sent += (size_t)n;
	}
	h->out_len = h->out_sent = 0;
	set_events(L, h, 0);
}

/* Tops the connection up to `pipeline` requests in flight, in one write. */
static void hc_fill(struct load *L, struct hconn *h)
{
	if (L->stopping || h->phase != HC_OPEN || h->out_len > 0)
		return;
	unsigned depth = L->c->pipeline;
	if (h->inflight >= depth)
		return;
	unsigned k = depth - h->inflight;
	uint64_t t = now_ns();
	for (unsigned j = 0; j < k; j++)
		h->t_send[(h->q_head + h->inflight + j) % depth] = t;
	h->inflight += k;
	h->out_len = (size_t)k * L->req_len;
	h->out_sent = 0;
	hc_flush(L, h);
}

static void hc_start(struct load *L, struct hconn *h)
{
	unsigned src = L->c->src_addrs ? 1 + (L->next_src++ % L->c->src_addrs) : 0;
	int fd = net_connect_from(&L->c->dst, src, 1);
	if (fd < 0) {
		L->r->errors[REQ_ERR_CONNECT]++;
		L->r->last_errno = -fd;
		h->phase = HC_GONE;
		return;
	}
	h->fd = fd;
	h->phase = HC_CONNECTING;
	h->want_out = 1;
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.u32 = h->index };
	if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
		fatal("epoll_ctl ADD");
}

static void take_answers(struct load *L, struct hconn *h, uint64_t t)
{
	const struct reqload_config *c = L->c;
	struct reqload_result *r = L->r;
	size_t off = 0;
	for (unsigned guard = 0; guard < 100000 && off < h->in_len; guard++) {
		int status;
		const char *body;
		size_t blen, used;
		int pr = parse_response(h->in + off, h->in_len - off, &status, &body, &blen, &used);
		if (pr == 0)
			break;
		if (pr < 0 || h->inflight == 0) {
			hc_fail(L, h, REQ_ERR_PROTOCOL, 0);
			return;
		}
		uint64_t sent = h->t_send[h->q_head];
		h->q_head = (h->q_head + 1) % c->pipeline;
		h->inflight--;
		off += used;
		if (t < L->count_from) {
			r->warmup_done++;
			continue;
		}
		if (t > L->count_to)
			continue;	/* read after time was up: cut off */
		hist_add(&r->lat, t - sent);
		if (status >= 200 && status < 300) {
			r->ok++;
			r->body_bytes += blen;
			if (c->expect && !memmem(body, blen, c->expect, strlen(c->expect)))
				r->bad_body++;
		} else {
			r->non2xx++;
			r->last_status = status;
		}
	}
	if (off > 0) {
		memmove(h->in, h->in + off, h->in_len - off);
		h->in_len -= off;
	}
}

static void hc_readable(struct load *L, struct hconn *h)
{
	ssize_t n = read(h->fd, h->in + h->in_len, REQ_IN_MAX - h->in_len);
	int err = errno;
	uint64_t t = now_ns();
	if (n < 0) {
		if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
			return;
		hc_fail(L, h, REQ_ERR_CLOSED, err);
		return;
	}
	if (n == 0) {
		hc_fail(L, h, REQ_ERR_CLOSED, 0);
		return;
	}
	h->in_len += (size_t)n;
	take_answers(L, h, t);
	if (h->fd >= 0)
		hc_fill(L, h);
}

static void hc_event(struct load *L, struct hconn *h, uint32_t events)
{
	if (h->phase == HC_CONNECTING) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		int err = net_connect_result(h->fd);
		if (err != 0) {
			L->r->errors[REQ_ERR_CONNECT]++;
			L->r->last_errno = err;
			hc_close(L, h);
			h->phase = HC_GONE;
			return;
		}
		h->phase = HC_OPEN;
		hc_fill(L, h);
		return;
	}
	if (h->phase != HC_OPEN)
		return;
	int fd = h->fd;
	if ((events & EPOLLOUT) && h->out_len > 0)
		hc_flush(L, h);
	/* a failed write may have replaced the socket: these events were not its */
	if (h->fd == fd && h->phase == HC_OPEN && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
		hc_readable(L, h);
}

int reqload_run(const struct reqload_config *c, struct reqload_result *r,
		uint64_t hard_deadline_ns)
{
	struct load L = { .c = c, .r = r };
	memset(r, 0, sizeof *r);
	hist_init(&r->lat);
	char req[1024];
	int rl = build_request(req, sizeof req, c->host, c->port, c->path);
	if (rl < 0) {
		errno = E2BIG;
		fatal("request too long");
	}
	L.req_len = (size_t)rl;
	L.batch = malloc(L.req_len * c->pipeline);
	L.conns = calloc(c->conns, sizeof *L.conns);
	if (!L.batch || !L.conns) {
		free(L.batch);
		free(L.conns);
		return -1;
	}
	for (unsigned j = 0; j < c->pipeline; j++)
		memcpy(L.batch + j * L.req_len, req, L.req_len);
	L.epfd = epoll_create1(EPOLL_CLOEXEC);
	if (L.epfd < 0)
		fatal("epoll_create1");
	int rc = 0;
	for (unsigned i = 0; i < c->conns; i++) {
		struct hconn *h = &L.conns[i];
		h->fd = -1;
		h->index = i;
		h->t_send = calloc(c->pipeline, sizeof *h->t_send);
		h->in = malloc(REQ_IN_MAX);
		if (!h->t_send || !h->in)
			rc = -1;
	}
	if (rc == 0) {
		uint64_t t0 = now_ns();
		L.count_from = t0 + secs_to_ns(c->warmup_s);
		L.count_to = L.count_from + secs_to_ns(c->duration_s);
		if (L.count_to > hard_deadline_ns)
			L.count_to = hard_deadline_ns;
		for (unsigned i = 0; i < c->conns; i++)
			hc_start(&L, &L.conns[i]);
		struct epoll_event evs[MAX_EVENTS];
		uint64_t t = now_ns();
		int window_open = 0;
		while (t < L.count_to) {
			if (!window_open && t >= L.count_from) {
				window_open = 1;
				if (c->on_window)
					c->on_window(c->window_ctx, 0);
			}
			uint64_t wake = window_open ? L.count_to : L.count_from;
			int n = epoll_wait(L.epfd, evs, MAX_EVENTS, ms_until(wake, t, 100));
			if (n < 0 && errno != EINTR)
				fatal("epoll_wait");
			for (int i = 0; i < n; i++) {
				struct hconn *h = &L.conns[evs[i].data.u32];
				if (h->fd >= 0)
					hc_event(&L, h, evs[i].events);
			}
			t = now_ns();
		}
		L.stopping = 1;
		if (c->on_window)
			c->on_window(c->window_ctx, 1);
		r->secs = (double)(L.count_to - L.count_from) / 1e9;
	}
	for (unsigned i = 0; i < c->conns; i++) {
		struct hconn *h = &L.conns[i];
		r->cut_off += h->inflight;
		hc_close(&L, h);
		free(h->t_send);
		free(h->in);
	}
	close_fd(L.epfd);
	free(L.conns);
	free(L.batch);
	return rc;
}

/* ---- blocking one-shot GET ---------------------------------------------- */

/* poll() one fd for `events` until the deadline: 1 ready, 0 timed out */
static int wait_fd(int fd, short events, uint64_t deadline)
{
	for (unsigned guard = 0; guard < 100000; guard++) {
		uint64_t t = now_ns();
		if (t >= deadline)
			return 0;
		struct pollfd p = { .fd = fd, .events = events };
		int n = poll(&p, 1, ms_until(deadline, t, 1000));
		if (n > 0)
			return 1;
		if (n < 0 && errno != EINTR)
			fatal("poll");
	}
	return 0;
}

static int get_fail(int *fd, int err)
{
	if (*fd >= 0)
		close_fd(*fd);
	*fd = -1;
	errno = err;
	return -1;
}

int req_get(const struct sockaddr_in *dst, const char *host, int port, const char *path,
	    int *fd, char *body, size_t cap, size_t *body_len, uint64_t deadline_ns)
{
	char req[1024];
	int rl = build_request(req, sizeof req, host, port, path);
	if (rl < 0)
		return get_fail(fd, E2BIG);
	if (*fd < 0) {
		int s = net_connect_from(dst, 0, 1);
		if (s < 0)
			return get_fail(fd, -s);
		*fd = s;
		if (!wait_fd(s, POLLOUT, deadline_ns))
			return get_fail(fd, ETIMEDOUT);
		int err = net_connect_result(s);
		if (err)
			return get_fail(fd, err);
	}
	for (size_t sent = 0; sent < (size_t)rl;) {
		ssize_t n = send(*fd, req + sent, (size_t)rl - sent, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				return get_fail(fd, errno);
			if (!wait_fd(*fd, POLLOUT, deadline_ns))
				return get_fail(fd, ETIMEDOUT);
			continue;
		}
		sent += (size_t)n;
	}
	static char in[REQ_IN_MAX];
	size_t len = 0;
	for (unsigned guard = 0; guard < 100000; guard++) {
		int status;
		const char *b;
		size_t blen, used;
		int pr = parse_response(in, len, &status, &b, &blen, &used);
		if (pr < 0)
			return get_fail(fd, EPROTO);
		if (pr > 0) {
			if (used != len)	/* more than one answer to one request */
				return get_fail(fd, EPROTO);
			size_t take = blen < cap ? blen : cap - 1;
			memcpy(body, b, take);
			body[take] = 0;
			*body_len = blen;
			return status;
		}
		if (!wait_fd(*fd, POLLIN, deadline_ns))
			return get_fail(fd, ETIMEDOUT);
		ssize_t n = read(*fd, in + len, sizeof in - len);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
				continue;
			return get_fail(fd, errno);
		}
		if (n == 0)
			return get_fail(fd, ECONNRESET);
		len += (size_t)n;
	}
	return get_fail(fd, ETIMEDOUT);
}
