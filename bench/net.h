/* Socket helpers for the load generator: loopback only, by construction. */
#ifndef BENCH_NET_H
#define BENCH_NET_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/resource.h>

/* Parses an IPv4 dotted quad and accepts it only inside 127.0.0.0/8. */
int net_parse_loopback(const char *host, struct in_addr *out);

/* Raises the soft RLIMIT_NOFILE to the hard limit; reports both. */
int net_raise_nofile(rlim_t *soft, rlim_t *hard);

/* Non-blocking TCP connect to dst from source address 127.0.0.src_host
 * (1..254, 0 = let the kernel choose), with TCP_NODELAY if nodelay (only
 * connections that send more than one request need it). Returns the fd
 * (connect may still be in progress: wait for EPOLLOUT, then
 * net_connect_result) or -errno. */
int net_connect_from(const struct sockaddr_in *dst, unsigned src_host, int nodelay);

/* After EPOLLOUT on a connecting socket: 0 if connected, else errno. */
int net_connect_result(int fd);

/* Asks the kernel to stamp received data (SO_TIMESTAMPNS). 0 or -errno. */
int net_enable_rx_stamps(int fd);

/* read() that also reports the kernel's receive stamp of the newest data
 * read, turned monotonic with real_minus_mono (CLOCK_REALTIME -
 * CLOCK_MONOTONIC); *arrival is 0 when the kernel gave none. */
ssize_t net_read_stamped(int fd, void *buf, size_t len, int64_t real_minus_mono,
			 uint64_t *arrival);

/* A port that 127.0.0.1 can bind right now, or -1; seed varies the pick. */
int net_free_port(unsigned seed);

#endif
