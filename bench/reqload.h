/* Plain HTTP/1.1 requests for the load generator: a keep-alive request
 * load (N connections, optional pipelining, fixed duration) and blocking
 * one-shot GETs (stats endpoints, waiting for a reload to show). */
#ifndef BENCH_REQLOAD_H
#define BENCH_REQLOAD_H

#include "hist.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

/* a response (head + body) must fit in this per-connection buffer */
#define REQ_IN_MAX 16384

struct reqload_config {
	struct sockaddr_in dst;
	const char *host;	/* for the Host header */
	int port;
	const char *path;	/* request target, e.g. /work?name=x */
	unsigned conns;
	unsigned pipeline;	/* requests outstanding per connection (1 = none) */
	double warmup_s;	/* run this long before counting */
	double duration_s;	/* then count this long */
	const char *expect;	/* a 2xx body must contain this (NULL = any) */
	unsigned src_addrs;	/* spread over 127.0.0.1..127.0.0.K */
	int verbose;
	/* called when counting starts and when it ends (e.g. to read the
	 * server's CPU time); may be NULL */
	void (*on_window)(void *ctx, int end);
	void *window_ctx;
};

enum { REQ_ERR_CONNECT, REQ_ERR_PROTOCOL, REQ_ERR_CLOSED, REQ_ERR_KINDS };

struct reqload_result {
	double secs;		/* length of the counting window */
	uint64_t ok;		/* 2xx answers completed in the window */
	uint64_t non2xx;	/* other statuses in the window */
	uint64_t bad_body;	/* 2xx without the expected text */
	uint64_t warmup_done;	/* answers during the warm-up */
	uint64_t cut_off;	/* requests in flight when time was up */
	uint64_t lost;		/* requests unanswered on a connection that broke */
	uint64_t errors[REQ_ERR_KINDS];
	uint64_t reconnects;
	uint64_t body_bytes;	/* of the counted answers */
	int last_status;	/* last non-2xx status */
	int last_errno;
	struct hist lat;	/* request written -> whole answer read */
};

extern const char *const reqload_error_names[REQ_ERR_KINDS];

/* Runs the load; every connection is closed when it returns. 0, or -1 if
 * out of memory. hard_deadline_ns (CLOCK_MONOTONIC) stops it regardless. */
int reqload_run(const struct reqload_config *c, struct reqload_result *r,
		uint64_t hard_deadline_ns);

/* One blocking HTTP/1.1 exchange on *fd (connected first if *fd < 0; left
 * open for reuse, or closed and set to -1 on any failure). Returns the
 * status and the body (NUL-terminated, cut to cap - 1 bytes, *body_len its
 * full length), or -1 with errno set (ETIMEDOUT past deadline_ns). */
int req_get(const struct sockaddr_in *dst, const char *host, int port, const char *path,
	    int *fd, char *body, size_t cap, size_t *body_len, uint64_t deadline_ns);

#endif
