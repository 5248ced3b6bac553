/* The publishing side of the fanout bench: a keep-alive connection that
 * POSTs numbered, timestamped events on a fixed schedule (several of them
 * split the seqs by stride), or one request that has the server publish a
 * burst of events itself (--burst-path). */
#ifndef BENCH_PUBLISHER_H
#define BENCH_PUBLISHER_H

#include "hist.h"

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#define PUB_RESP_MAX 4096

struct pub_config {
	struct sockaddr_in dst;
	const char *host;	/* for the Host header */
	int port;
	const char *channel;
	uint64_t events;	/* how many this connection sends */
	uint64_t seq_first;	/* its seqs: seq_first + i * seq_stride, */
	uint64_t seq_stride;	/* i < events (several connections interleave) */
	const char *burst_path;	/* instead: ONE POST to this path, body "EVENTS TS";
				 * the server publishes seqs 0..events-1 itself */
	double rate;		/* events/s; 0 = as fast as answers come */
	unsigned payload_size;	/* pad the JSON body to at least this */
	unsigned inflight;	/* requests outstanding at once (1 = no pipelining) */
	const char *extra;	/* JSON members put before seq and ts, or NULL */
	int rx_timestamps;	/* time answers by the kernel's receive stamp too */
	int64_t real_minus_mono; /* CLOCK_REALTIME - CLOCK_MONOTONIC, for those */
	int verbose;
};

struct pub_inflight {
	uint64_t seq;
	uint64_t t_send;
};

struct publisher {
	struct pub_config cfg;
	int epfd;
	uint64_t conn_tag;
	uint64_t timer_tag;
	int fd;
	int timerfd;
	int phase;
	int want_out;		/* EPOLLOUT registered */
	char *out;		/* requests not yet written */
	size_t out_len;
	size_t out_sent;
	size_t out_cap;
	char resp[PUB_RESP_MAX];
	size_t resp_len;
	struct pub_inflight *q;	/* ring: requests sent, answers pending */
	unsigned q_head;
	unsigned q_count;
	uint64_t t_start;	/* schedule origin */
	uint64_t period_ns;
	uint64_t due;		/* events the schedule allows so far */
	uint64_t next_seq;	/* events sent (index, not seq) */
	uint64_t ok;
	uint64_t failed;
	uint64_t first_send;
	uint64_t last_send;
	unsigned consecutive_resets;
	long long subs_min;	/* "subscribers" the server reported */
	long long subs_max;
	size_t max_body;	/* largest event body sent */
	uint8_t *ok_bits;	/* seqs the server accepted (2xx) */
	struct hist lat;	/* send -> whole answer read */
	struct hist lat_arrival; /* send -> kernel receive stamp of the answer:
				  * what the server took, without the time the
				  * generator, busy reading streams, took to look */
	struct hist lag;	/* actual send time - scheduled send time */
};

/* ok_bits must hold events bits. Returns 0, or -1 if out of memory. */
int pub_init(struct publisher *p, const struct pub_config *cfg, int epfd,
	     uint64_t conn_tag, uint64_t timer_tag, uint8_t *ok_bits);
/* Connects and starts the schedule. */
void pub_start(struct publisher *p);
void pub_on_conn_event(struct publisher *p, uint32_t epoll_events);
void pub_on_timer(struct publisher *p);
/* Checks the schedule without waiting for epoll to report the tick: with
 * thousands of ready streams the timer can sit far back in the ready list. */
void pub_poll_schedule(struct publisher *p);
/* Gives up publishing if the oldest request waits longer than timeout_ns:
 * a server that stops answering must not keep the run going. */
void pub_check_timeout(struct publisher *p, uint64_t now, uint64_t timeout_ns);
/* All events answered (or the publisher gave up). */
int pub_finished(const struct publisher *p);
int pub_gave_up(const struct publisher *p);
void pub_free(struct publisher *p);

#endif
