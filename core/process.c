#include "process.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "access_log.h"
#include "admin.h"
#include "bus.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"
#include "redis_bus.h"
#include "reload.h"
#include "signals.h"
#include "worker.h"

/* What a worker tells the process (struct mailbox_msg.cmd). */
enum process_cmd { PROCESS_WORKER_READY, PROCESS_WORKER_EXITED, PROCESS_DRAIN };

/* ---- the listening socket --------------------------------------------- */

int process_listen_socket(const char *spec, int backlog, bool reuseport, const char *option)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof host) {
        log_error("%s wants HOST:PORT, got \"%s\"", option, spec);
        return -1;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    char *h = host;
    if (h[0] == '[' && h[strlen(h) - 1] == ']') {   /* [::1]:8080 */
        h[strlen(h) - 1] = '\0';
        h++;
    }
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *res;
    int rc = getaddrinfo(h, colon + 1, &hints, &res);
    if (rc != 0) {
        log_error("%s %s: %s", option, spec, gai_strerror(rc));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    /* Accepted sockets inherit TCP_NODELAY from the listener (Linux): one
     * system call here instead of one per connection. */
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
        log_error("cannot listen on %s: %s", spec, strerror(errno));
        if (fd >= 0 && close(fd) < 0)
            log_warn("close: %s", strerror(errno));
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    /* Accept once the first bytes are in (or after ~1 s of silence): the
     * request is then ready to read, and a connect that says nothing costs
     * no slot, timer or wake-up meanwhile. An optimisation only. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_DEFER_ACCEPT, &one, sizeof one) < 0)
        log_warn("TCP_DEFER_ACCEPT: %s", strerror(errno));
    return fd;
}

/* The address really bound: with port 0 the kernel picks one, and tests
 * read it from the "listening on" line. */
void process_bound_address(int fd, char *text, size_t size)
{
    struct sockaddr_in6 sa;
    socklen_t len = sizeof sa;
    char host[INET6_ADDRSTRLEN] = "?";
    snprintf(text, size, "?");
    if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
        return;
    if (sa.sin6_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        snprintf(text, size, "%s:%u", host, ntohs(in->sin_port));
    } else {
        inet_ntop(AF_INET6, &sa.sin6_addr, host, sizeof host);
        snprintf(text, size, "[%s]:%u", host, ntohs(sa.sin6_port));
    }
}

/* ---- telling the workers ---------------------------------------------- */

static void reload_all(void *ctx)
{
    struct process *p = ctx;
    for (unsigned i = 0; i < p->nworkers; i++)
        worker_tell(&p->workers[i], WORKER_RELOAD);
}

/* SIGTERM, SIGINT, os.exit, or a worker that could not start. */
static void drain_all(struct process *p)
{
    if (p->draining)
        return;
    p->draining = true;
    reloader_stop(p->reloader);
    for (unsigned i = 0; i < p->nworkers; i++)
        worker_tell(&p->workers[i], WORKER_DRAIN);
}

static void on_signal(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)loop;
    (void)revents;
    struct process *p = s->data;
    if (s->signum == SIGUSR1) {   /* logrotate renamed the access log */
        access_log_reopen();
        return;
    }
    if (s->signum == SIGHUP) {
        log_info("SIGHUP: reloading apps");
        if (p->reloader)
            reloader_reload(p->reloader);   /* also re-resolves a linked --apps */
        else
            reload_all(p);
        return;
    }
    drain_all(p);
}

/* ---- hearing from the workers ------------------------------------------ */

static void on_message(void *ctx, struct mailbox_msg msg)
{
    struct process *p = ctx;
    struct worker *w = msg.arg;
    switch (msg.cmd) {
    case PROCESS_WORKER_READY:
        if (++p->nready == p->nworkers) {
            char addr[80];
            process_bound_address(p->listen_fd, addr, sizeof addr);
            log_info("sluice listening on %s, apps from %s", addr, p->cfg->apps_dir);
        }
        break;
    case PROCESS_WORKER_EXITED:
        if (worker_join(w) < 0 || w->failed)
            p->failed = true;
        /* One worker gone (it could not start) means the others go too. */
        if (!p->draining)
            drain_all(p);
        if (++p->nexited == p->nworkers)
            ev_break(p->loop, EVBREAK_ALL);
        break;
    case PROCESS_DRAIN:
        drain_all(p);
        break;
    }
}

void process_worker_ready(struct process *p, struct worker *w)
{
    mailbox_post(&p->inbox, PROCESS_WORKER_READY, w);
}

void process_worker_exited(struct process *p, struct worker *w)
{
    /* Cannot be lost: the process would wait for this worker for ever. */
    while (mailbox_post(&p->inbox, PROCESS_WORKER_EXITED, w) < 0)
        sleep(1);
}

void process_request_drain(struct process *p)
{
    mailbox_post(&p->inbox, PROCESS_DRAIN, NULL);
}

/* ---- life ----------------------------------------------------------------- */

static int write_pid_file(const char *path)
{
    FILE *f = fopen(path, "w");
    bool written = f && fprintf(f, "%ld\n", (long)getpid()) >= 0;
    if (f && fclose(f) != 0)
        written = false;
    if (!written) {
        log_error("cannot write pid file %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

int process_init(struct process *p, const struct config *cfg, unsigned nworkers)
{
    memset(p, 0, sizeof *p);
    p->cfg = cfg;
    p->listen_fd = -1;
    if (cfg->pid_file) {
        if (write_pid_file(cfg->pid_file) < 0)
            return -1;
        p->pid_written = true;
    }
    p->loop = ev_default_loop(EVFLAG_AUTO);
    if (!p->loop) {
        log_error("cannot create the event loop");
        return -1;
    }
    p->workers = calloc(nworkers, sizeof *p->workers);
    if (!p->workers || mailbox_init(&p->inbox, p->loop, on_message, p) < 0) {
        log_error("out of memory starting the process");
        return -1;
    }
    p->nworkers = nworkers;
    p->started = clock_mono();
    if (metrics_init(nworkers, cfg->histograms) < 0) {
        log_error("out of memory starting the process");
        return -1;
    }

    p->listen_fd = process_listen_socket(cfg->listen, cfg->backlog,
                                         cfg->reuseport && nworkers > 1, "--listen");
    if (p->listen_fd < 0)
        return -1;
    if (cfg->reuseport && nworkers > 1) {
        /* The same address as the first (its port, if the kernel chose). */
        char addr[80];
        process_bound_address(p->listen_fd, addr, sizeof addr);
        p->extra_fds = calloc(nworkers, sizeof *p->extra_fds);
        if (!p->extra_fds)
            return -1;
        for (unsigned i = 1; i < nworkers; i++) {
            p->extra_fds[i] = process_listen_socket(addr, cfg->backlog, true, "--listen");
            if (p->extra_fds[i] < 0) {
                for (unsigned j = 1; j < i; j++)
                    if (close(p->extra_fds[j]) < 0)
                        log_warn("close listener: %s", strerror(errno));
                free(p->extra_fds);
                p->extra_fds = NULL;
                return -1;
            }
        }
    }
    p->bus = bus_new(p->loop, nworkers, cfg->history_len, cfg->history_ttl,
                     cfg->history_bytes);
    if (!p->bus) {
        log_error("out of memory starting the process");
        return -1;
    }
    if (cfg->redis_url) {
        p->redis = redis_bus_new(p->loop, p->bus, cfg->redis_url, cfg->redis_prefix);
        if (!p->redis)
            return -1;
    }

    ev_signal_init(&p->sig_int, on_signal, SIGINT);
    ev_signal_init(&p->sig_term, on_signal, SIGTERM);
    ev_signal_init(&p->sig_hup, on_signal, SIGHUP);
    ev_signal_init(&p->sig_usr1, on_signal, SIGUSR1);
    p->sig_int.data = p->sig_term.data = p->sig_hup.data = p->sig_usr1.data = p;
    ev_signal_start(p->loop, &p->sig_int);
    ev_signal_start(p->loop, &p->sig_term);
    ev_signal_start(p->loop, &p->sig_hup);
    ev_signal_start(p->loop, &p->sig_usr1);
    /* Before any worker thread exists: they inherit the blocked signals. */
    signals_loop_ready();

    /* Its own socket, on this loop: probes answer however busy the
     * workers are. */
    if (cfg->admin_listen && !(p->admin = admin_start(p, cfg->admin_listen)))
        return -1;

    if (cfg->watch)
        p->reloader = reloader_new(p->loop, cfg->apps_dir, cfg->reload_debounce,
                                   reload_all, p);
    return 0;
}

int process_run(struct process *p)
{
    unsigned started = 0;
    for (; started < p->nworkers; started++)
        if (worker_start(&p->workers[started], p, started, p->cfg,
                         p->extra_fds && started ? p->extra_fds[started] : p->listen_fd,
                         p->extra_fds && started) < 0)
            break;
    if (started < p->nworkers) {
        p->failed = true;
        for (unsigned i = started > 0 ? started : 1; p->extra_fds && i < p->nworkers; i++)
            if (close(p->extra_fds[i]) < 0)
                log_warn("close listener: %s", strerror(errno));
        /* Those running go the way of a drain; the rest never existed. */
        p->nworkers = started;
        if (started == 0)
            return 1;
        drain_all(p);
    }
    ev_run(p->loop, 0);
    return p->failed ? 1 : 0;
}

void process_free(struct process *p)
{
    admin_free(p->admin);
    reloader_free(p->reloader);
    if (p->loop) {
        ev_signal_stop(p->loop, &p->sig_int);
        ev_signal_stop(p->loop, &p->sig_term);
        ev_signal_stop(p->loop, &p->sig_hup);
        ev_signal_stop(p->loop, &p->sig_usr1);
    }
    mailbox_free(&p->inbox);
    free(p->workers);
    free(p->extra_fds);
    redis_bus_free(p->redis);   /* before the bus it delivers to */
    bus_free(p->bus);   /* every worker is joined: nobody else holds it */
    metrics_free();
    if (p->listen_fd >= 0 && close(p->listen_fd) < 0)
        log_warn("close listener: %s", strerror(errno));
    if (p->pid_written && unlink(p->cfg->pid_file) < 0)
        log_debug("unlink %s: %s", p->cfg->pid_file, strerror(errno));
    if (p->loop)
        ev_loop_destroy(p->loop);
}
