/* Socket helpers for the load generator: loopback only, by construction. */
#ifndef BENCH_NET_H
#define BENCH_NET_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/resource.h>

/* Parses an IPv4 dotted quad and accepts it only inside 127.0.0.0/8. */
int net_parse_loopback(const char *host, struct in_addr *out);

/* Raises the soft RLIMIT_NOFILE to the hard limit; reports both. */
int net_raise_nofile(rlim_t *soft, rlim_t *hard);

/* Non-blocking TCP connect to dst from source address 127.0.0.src_host
 * (1..254, 0 = let the kernel choose). Returns the fd (connect may still be
 * in progress: wait for EPOLLOUT, then net_connect_result) or -errno. */
int net_connect_from(const struct sockaddr_in *dst, unsigned src_host);

/* After EPOLLOUT on a connecting socket: 0 if connected, else errno. */
int net_connect_result(int fd);

/* A port that 127.0.0.1 can bind right now, or -1; seed varies the pick. */
int net_free_port(unsigned seed);

#endif
