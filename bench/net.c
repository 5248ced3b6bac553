#define _GNU_SOURCE
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

int net_parse_loopback(const char *host, struct in_addr *out)
{
	if (inet_pton(AF_INET, host, out) != 1)
		return -1;
	if ((ntohl(out->s_addr) >> 24) != 127)
		return -1;	/* the bench never sends traffic off the host */
	return 0;
}

int net_raise_nofile(rlim_t *soft, rlim_t *hard)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return -1;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
			return -1;
	}
	*soft = rl.rlim_cur;
	*hard = rl.rlim_max;
	return 0;
}

static void close_keep_errno(int fd)
{
	int saved = errno;
	(void)close(fd);	/* nothing useful to do if closing fails here */
	errno = saved;
}

int net_connect_from(const struct sockaddr_in *dst, unsigned src_host, int nodelay)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	/* requests after the first are small and latency is what we measure */
	if (nodelay && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
		goto fail;
	if (src_host >= 1 && src_host <= 254) {
		/* Spread sources over 127.0.0.x: each source address has its own
		 * ~28k ephemeral ports. NO_PORT defers the port choice to
		 * connect(), which picks it per 4-tuple instead of per address. */
		if (setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one) != 0)
			goto fail;
		struct sockaddr_in src;
		memset(&src, 0, sizeof src);
		src.sin_family = AF_INET;
		src.sin_port = 0;
		src.sin_addr.s_addr = htonl((127u << 24) | src_host);
		if (bind(fd, (const struct sockaddr *)&src, sizeof src) != 0)
			goto fail;
	}
	if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) != 0 && errno != EINPROGRESS)
		goto fail;
	return fd;
fail:;
	int err = errno;
	close_keep_errno(fd);
	return -err;
}

int net_connect_result(int fd)
{
	int err = 0;
	socklen_t len = sizeof err;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
		return errno;
	return err;
}

int net_enable_rx_stamps(int fd)
{
	int one = 1;
	return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) == 0 ? 0 : -errno;
}

ssize_t net_read_stamped(int fd, void *buf, size_t len, int64_t real_minus_mono,
			 uint64_t *arrival)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	union {
		char buf[CMSG_SPACE(sizeof(struct timespec)) * 2];
		struct cmsghdr align;
	} control;
	struct msghdr msg = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = control.buf, .msg_controllen = sizeof control.buf,
	};
	*arrival = 0;
	ssize_t n = recvmsg(fd, &msg, 0);
	if (n <= 0)
		return n;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
			struct timespec ts;
			memcpy(&ts, CMSG_DATA(cm), sizeof ts);
			int64_t real = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
			if (real > real_minus_mono)
				*arrival = (uint64_t)(real - real_minus_mono);
		}
	}
	return n;
}

/* Tries to bind 127.0.0.1:port; returns the bound port or -1. */
static int try_bind_port(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof a;
	int got = -1;
	if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		got = ntohs(a.sin_port);
	if (close(fd) != 0)
		return -1;
	return got;
}

int net_free_port(unsigned seed)
{
	/* Prefer ports below the usual ephemeral range (32768+), so the many
	 * client sockets of a run cannot be handed the port in the meantime. */
	for (unsigned attempt = 0; attempt < 64; attempt++) {
		seed = seed * 1103515245u + 12345u;
		int port = 20000 + (int)((seed >> 8) % 12000u);
		if (try_bind_port(port) == port)
			return port;
	}
	return try_bind_port(0);
}
