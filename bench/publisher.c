#define _GNU_SOURCE
#include "clock.h"
#include "publisher.h"

#include "net.h"
#include "stream_parse.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* reconnects in a row without one answer before we give up */
#define PUB_MAX_RESETS 10

enum { PUB_OFF, PUB_CONNECTING, PUB_OPEN, PUB_FAILED };

static void fatal(const char *what)
{
	fprintf(stderr, "loadgen: publisher: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void ep_ctl(struct publisher *p, int op, int fd, uint32_t events, uint64_t tag)
{
	struct epoll_event ev = { .events = events, .data.u64 = tag };
	if (epoll_ctl(p->epfd, op, fd, &ev) != 0)
		fatal("epoll_ctl");
}

int pub_init(struct publisher *p, const struct pub_config *cfg, int epfd,
	     uint64_t conn_tag, uint64_t timer_tag, uint8_t *ok_bits)
{
	memset(p, 0, sizeof *p);
	p->cfg = *cfg;
	if (p->cfg.inflight == 0)
		p->cfg.inflight = 1;
	p->epfd = epfd;
	p->conn_tag = conn_tag;
	p->timer_tag = timer_tag;
	p->fd = -1;
	p->timerfd = -1;
	p->phase = PUB_OFF;
	p->subs_min = -1;
	p->subs_max = -1;
	p->ok_bits = ok_bits;
	hist_init(&p->lat);
	hist_init(&p->lat_arrival);
	hist_init(&p->lag);
	if (p->cfg.seq_stride == 0)
		p->cfg.seq_stride = 1;
	if (p->cfg.burst_path)
		p->cfg.inflight = 1;	/* one request in all */
	p->q = calloc(p->cfg.inflight, sizeof *p->q);
	return p->q ? 0 : -1;
}

void pub_free(struct publisher *p)
{
	if (p->fd >= 0 && close(p->fd) != 0)
		fatal("close");
	if (p->timerfd >= 0 && close(p->timerfd) != 0)
		fatal("close timerfd");
	p->fd = -1;
	p->timerfd = -1;
	free(p->q);
	free(p->out);
	p->q = NULL;
	p->out = NULL;
}

static void pub_connect(struct publisher *p)
{
	int fd = net_connect_from(&p->cfg.dst, 0, 1);
	if (fd < 0) {
		fprintf(stderr, "loadgen: publisher connect: %s\n", strerror(-fd));
		p->phase = PUB_FAILED;
		return;
	}
	if (p->cfg.rx_timestamps && net_enable_rx_stamps(fd) != 0)
		fatal("setsockopt SO_TIMESTAMPNS");
	p->fd = fd;
	p->phase = PUB_CONNECTING;
	p->want_out = 1;
	ep_ctl(p, EPOLL_CTL_ADD, fd, EPOLLOUT | EPOLLIN, p->conn_tag);
}

/* Drops the connection. Requests written but unanswered count as failed:
 * we cannot know whether the server published them. Then reconnects. */
static void pub_reset(struct publisher *p, const char *why)
{
	p->failed += p->q_count;
	p->q_count = 0;
	p->q_head = 0;
	p->out_len = 0;
	p->out_sent = 0;
	p->resp_len = 0;
	if (p->fd >= 0 && close(p->fd) != 0)	/* also leaves the epoll set */
		fatal("close");
	p->fd = -1;
	if (++p->consecutive_resets > PUB_MAX_RESETS) {
		fprintf(stderr, "loadgen: publisher: %s; giving up after %d reconnects\n", why,
			PUB_MAX_RESETS);
		p->phase = PUB_FAILED;
		return;
	}
	if (p->cfg.verbose)
		fprintf(stderr, "loadgen: publisher: %s; reconnecting\n", why);
	pub_connect(p);
}

/* Appends one POST to the output buffer. Body:
 * {[EXTRA,]"seq":N,"ts":T[,"pad":"x..."]} — the extra members come first,
 * so the receiving side cannot rely on seq and ts opening the data. */
static void append_request(struct publisher *p, uint64_t seq, uint64_t ts)
{
	char core[64];
	int cl = snprintf(core, sizeof core, "\"seq\":%" PRIu64 ",\"ts\":%" PRIu64, seq, ts);
	size_t extra_len = p->cfg.extra ? strlen(p->cfg.extra) : 0;
	/* { [extra ,] core } */
	size_t base = 1 + (extra_len ? extra_len + 1 : 0) + (size_t)cl + 1;
	/* ,"pad":"" adds 9 bytes around the padding */
	size_t pad = 0;
	if (p->cfg.payload_size > base + 9)
		pad = p->cfg.payload_size - base - 9;
	size_t body_len = base + (pad ? 9 + pad : 0);
	if (body_len > p->max_body)
		p->max_body = body_len;
	size_t need = p->out_len + 256 + strlen(p->cfg.channel) + strlen(p->cfg.host) + body_len;
	if (need > p->out_cap) {
		char *n = realloc(p->out, need);
		if (!n) {
			errno = ENOMEM;
			fatal("request buffer");
		}
		p->out = n;
		p->out_cap = need;
	}
	char *w = p->out + p->out_len;
	w += sprintf(w, "POST /pub/%s HTTP/1.1\r\nHost: %s:%d\r\n"
		     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
		     p->cfg.channel, p->cfg.host, p->cfg.port, body_len);
	*w++ = '{';
	if (extra_len) {
		memcpy(w, p->cfg.extra, extra_len);
		w += extra_len;
		*w++ = ',';
	}
	memcpy(w, core, (size_t)cl);
	w += cl;
	if (pad) {
		memcpy(w, ",\"pad\":\"", 8);
		w += 8;
		memset(w, 'x', pad);
		w += pad;
		*w++ = '"';
	}
	*w++ = '}';
	p->out_len = (size_t)(w - p->out);
}

/* The burst trigger: POST BURST_PATH with body "EVENTS TS"; the server
 * publishes {"seq":0..EVENTS-1,"ts":TS} itself (bench.lua's /burst). */
static void append_burst_request(struct publisher *p, uint64_t ts)
{
	char body[64];
	int bl = snprintf(body, sizeof body, "%" PRIu64 " %" PRIu64, p->cfg.events, ts);
	size_t need = 256 + strlen(p->cfg.burst_path) + strlen(p->cfg.host) + (size_t)bl;
	if (need > p->out_cap) {
		char *n = realloc(p->out, need);
		if (!n) {
			errno = ENOMEM;
			fatal("request buffer");
		}
		p->out = n;
		p->out_cap = need;
	}
	p->out_len = (size_t)sprintf(p->out, "POST %s HTTP/1.1\r\nHost: %s:%d\r\n"
				     "Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s",
				     p->cfg.burst_path, p->cfg.host, p->cfg.port, bl, body);
	p->max_body = (size_t)bl;
}

static void flush_out(struct publisher *p)
{
	while (p->out_sent < p->out_len) {
		ssize_t n = send(p->fd, p->out + p->out_sent, p->out_len - p->out_sent,
				 MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				if (!p->want_out) {
					p->want_out = 1;
					ep_ctl(p, EPOLL_CTL_MOD, p->fd, EPOLLIN | EPOLLOUT, p->conn_tag);
				}
				return;
			}
			pub_reset(p, strerror(errno));
			return;
		}
		p->out_sent += (size_t)n;
	}
	p->out_len = 0;
	p->out_sent = 0;
	if (p->want_out) {
		p->want_out = 0;
		ep_ctl(p, EPOLL_CTL_MOD, p->fd, EPOLLIN, p->conn_tag);
	}
}

/* Queues every event the schedule and the in-flight cap allow, then writes. */
static void send_due(struct publisher *p)
{
	if (p->phase != PUB_OPEN)
		return;
	int queued = 0;
	if (p->cfg.burst_path) {
		if (p->next_seq == 0 && p->q_count == 0) {
			uint64_t ts = now_ns();
			append_burst_request(p, ts);
			p->q[0] = (struct pub_inflight){ .seq = 0, .t_send = ts };
			p->q_count = 1;
			p->first_send = p->last_send = ts;
			p->next_seq = p->cfg.events;	/* all of them: one request */
			flush_out(p);
		}
		return;
	}
	while (p->next_seq < p->cfg.events && p->q_count < p->cfg.inflight &&
	       (p->cfg.rate <= 0 || p->next_seq < p->due)) {
		uint64_t ts = now_ns();	/* taken right before it is written */
		uint64_t seq = p->cfg.seq_first + p->next_seq * p->cfg.seq_stride;
		append_request(p, seq, ts);
		struct pub_inflight *slot = &p->q[(p->q_head + p->q_count) % p->cfg.inflight];
		slot->seq = seq;
		slot->t_send = ts;
		p->q_count++;
		if (p->first_send == 0)
			p->first_send = ts;
		p->last_send = ts;
		if (p->cfg.rate > 0) {
			uint64_t scheduled = p->t_start + p->next_seq * p->period_ns;
			hist_add(&p->lag, ts > scheduled ? ts - scheduled : 0);
		}
		p->next_seq++;
		queued = 1;
	}
	if (queued)
		flush_out(p);
}

static long long json_number_after(const char *s, size_t n, const char *key)
{
	size_t k = strlen(key);
	for (size_t i = 0; i + k < n; i++) {
		if (memcmp(s + i, key, k) != 0)
			continue;
		size_t j = i + k;
		while (j < n && (s[j] == ' ' || s[j] == ':'))
			j++;
		long long v = 0;
		size_t start = j;
		for (; j < n && s[j] >= '0' && s[j] <= '9' && v < (1LL << 50); j++)
			v = v * 10 + (s[j] - '0');
		return j > start ? v : -1;
	}
	return -1;
}

/* Consumes every complete answer in resp[]; answers come back in request
 * order (HTTP/1.1), so each one matches the oldest request in flight. */
static void take_answers(struct publisher *p, uint64_t t_read, uint64_t t_arrival)
{
	for (unsigned guard = 0; guard < 1000000 && p->resp_len > 0; guard++) {
		struct sp_head h;
		size_t head_len;
		int hr = sp_parse_response_head(p->resp, p->resp_len, &h, &head_len);
		if (hr == 0) {
			if (p->resp_len >= sizeof p->resp)
				pub_reset(p, "publish response head too large");
			return;
		}
		if (hr < 0 || h.chunked) {
			pub_reset(p, hr < 0 ? "malformed publish response"
					    : "chunked publish response (unsupported)");
			return;
		}
		size_t body_len = h.content_length > 0 ? (size_t)h.content_length : 0;
		if (head_len + body_len > sizeof p->resp) {
			pub_reset(p, "publish response too large");
			return;
		}
		if (p->resp_len < head_len + body_len)
			return;
		if (p->q_count == 0) {
			pub_reset(p, "answer without a request");
			return;
		}
		struct pub_inflight *req = &p->q[p->q_head];
		p->q_head = (p->q_head + 1) % p->cfg.inflight;
		p->q_count--;
		hist_add(&p->lat, t_read - req->t_send);
		if (t_arrival)
			hist_add(&p->lat_arrival, t_arrival > req->t_send ? t_arrival - req->t_send : 0);
		p->consecutive_resets = 0;
		if (h.status >= 200 && h.status < 300 && p->cfg.burst_path) {
			/* the server took the burst: every seq counts as accepted */
			p->ok = p->cfg.events;
			memset(p->ok_bits, 0xff, (size_t)(p->cfg.events / 8));
			for (uint64_t s = p->cfg.events & ~(uint64_t)7; s < p->cfg.events; s++)
				p->ok_bits[s >> 3] |= (uint8_t)(1u << (s & 7));
		} else if (h.status >= 200 && h.status < 300) {
			p->ok++;
			p->ok_bits[req->seq >> 3] |= (uint8_t)(1u << (req->seq & 7));
			long long subs = json_number_after(p->resp + head_len, body_len,
							   "\"subscribers\"");
			if (subs >= 0) {
				if (p->subs_min < 0 || subs < p->subs_min)
					p->subs_min = subs;
				if (subs > p->subs_max)
					p->subs_max = subs;
			}
		} else {
			p->failed++;
			if (p->cfg.verbose || p->failed <= 3)
				fprintf(stderr, "loadgen: publish seq %" PRIu64 " answered %d\n",
					req->seq, h.status);
		}
		size_t used = head_len + body_len;
		memmove(p->resp, p->resp + used, p->resp_len - used);
		p->resp_len -= used;
	}
}

static void on_readable(struct publisher *p)
{
	uint64_t arrival = 0;
	void *into = p->resp + p->resp_len;
	size_t room = sizeof p->resp - p->resp_len;
	ssize_t n = p->cfg.rx_timestamps
		? net_read_stamped(p->fd, into, room, p->cfg.real_minus_mono, &arrival)
		: read(p->fd, into, room);
	int err = errno;	/* before the clock call can touch it */
	uint64_t t = now_ns();
	if (n < 0) {
		if (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)
			return;
		pub_reset(p, strerror(err));
		return;
	}
	if (n == 0) {
		pub_reset(p, "server closed the publish connection");
		return;
	}
	p->resp_len += (size_t)n;
	take_answers(p, t, arrival);
	send_due(p);
}

/* timerfd: a drift-free periodic tick; missed ticks arrive as a count */
static void start_schedule(struct publisher *p)
{
	p->t_start = now_ns();
	p->period_ns = (uint64_t)(1e9 / p->cfg.rate);
	if (p->period_ns == 0)
		p->period_ns = 1;
	p->due = 1;	/* event 0 goes out right away */
	p->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (p->timerfd < 0)
		fatal("timerfd_create");
	struct itimerspec its = {
		.it_interval = { .tv_sec = (time_t)(p->period_ns / NS_PER_S),
				 .tv_nsec = (long)(p->period_ns % NS_PER_S) },
		.it_value = { .tv_sec = (time_t)(p->period_ns / NS_PER_S),
			      .tv_nsec = (long)(p->period_ns % NS_PER_S) },
	};
	if (timerfd_settime(p->timerfd, 0, &its, NULL) != 0)
		fatal("timerfd_settime");
	ep_ctl(p, EPOLL_CTL_ADD, p->timerfd, EPOLLIN, p->timer_tag);
}

void pub_on_conn_event(struct publisher *p, uint32_t events)
{
	if (p->fd < 0)
		return;
	if (p->phase == PUB_CONNECTING) {
		if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
			return;
		int err = net_connect_result(p->fd);
		if (err != 0) {
			pub_reset(p, strerror(err));
			return;
		}
		p->phase = PUB_OPEN;
		p->want_out = 0;
		ep_ctl(p, EPOLL_CTL_MOD, p->fd, EPOLLIN, p->conn_tag);
		if (p->cfg.rate > 0 && p->timerfd < 0)
			start_schedule(p);	/* first connect: the clock starts now */
		send_due(p);
		return;
	}
	if (p->phase != PUB_OPEN)
		return;
	if (events & EPOLLOUT)
		flush_out(p);
	if (p->fd >= 0 && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
		on_readable(p);
}

void pub_on_timer(struct publisher *p)
{
	uint64_t expirations;
	ssize_t n = read(p->timerfd, &expirations, sizeof expirations);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return;
		fatal("read timerfd");
	}
	if (n != (ssize_t)sizeof expirations) {
		errno = EIO;
		fatal("short timerfd read");
	}
	p->due += expirations;
	send_due(p);
	if (p->next_seq >= p->cfg.events) {
		/* schedule done: stop the ticks (close also leaves epoll) */
		if (close(p->timerfd) != 0)
			fatal("close timerfd");
		p->timerfd = -2;	/* not -1: the schedule must not restart */
	}
}

void pub_poll_schedule(struct publisher *p)
{
	if (p->timerfd >= 0)
		pub_on_timer(p);	/* non-blocking: EAGAIN when no tick is due */
}

void pub_start(struct publisher *p)
{
	pub_connect(p);
}

void pub_check_timeout(struct publisher *p, uint64_t now, uint64_t timeout_ns)
{
	if (p->phase != PUB_OPEN || p->q_count == 0)
		return;
	const struct pub_inflight *oldest = &p->q[p->q_head];
	if (now > oldest->t_send && now - oldest->t_send > timeout_ns) {
		fprintf(stderr, "loadgen: publisher: no answer to seq %" PRIu64
			" within %.1f s; giving up\n", oldest->seq, (double)timeout_ns / 1e9);
		p->failed += p->q_count;
		p->q_count = 0;
		if (close(p->fd) != 0)
			fatal("close");
		p->fd = -1;
		p->phase = PUB_FAILED;
	}
}

int pub_gave_up(const struct publisher *p)
{
	return p->phase == PUB_FAILED;
}

int pub_finished(const struct publisher *p)
{
	return p->phase == PUB_FAILED ||
	       (p->phase == PUB_OPEN && p->next_seq >= p->cfg.events && p->q_count == 0);
}
