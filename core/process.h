/* The process: what there is one of, however many workers serve. It owns
 * the main thread and its default loop, the signals (fed to that loop by
 * the signal thread, core/signals.h), the reload watcher, the pid file and
 * the listening socket (open before any worker starts), and it starts,
 * tells and joins the workers. It talks to a worker only through the
 * worker's mailbox, and a worker to it only through the process's own
 * (process_worker_* below), so no state is shared but those queues. */
#ifndef SLUICE_PROCESS_H
#define SLUICE_PROCESS_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "mailbox.h"

struct worker;
struct reloader;
struct bus;
struct admin;

struct process {
    struct ev_loop *loop;          /* ev_default_loop, main thread */
    const struct config *cfg;
    int listen_fd;
    int *extra_fds;                /* --reuseport: workers 1.. listen on their own */
    bool pid_written;
    struct bus *bus;               /* the order and history of all events */
    struct redis_bus *redis;       /* --redis: the bus's upstream, or NULL */
    uint32_t open_conns;           /* of every worker (atomic), for --max-conns */
    ev_signal sig_int, sig_term, sig_hup;
    ev_signal sig_usr1;        /* reopens the access log */
    struct mailbox inbox;          /* from the workers */
    struct reloader *reloader;     /* NULL with --no-watch or no inotify */
    struct worker *workers;
    unsigned nworkers, nready, nexited;
    bool draining;                 /* every worker has been told to drain */
    bool failed;                   /* a worker could not start: exit 1 */
    struct admin *admin;           /* --admin-listen, else NULL */
    double started;                /* clock_mono() at process_init */
};

/* Writes the pid file, opens the listening socket(s), creates the bus and
 * sets up the main loop's signal watchers and the reload watcher; starts
 * no worker yet.
 * 0, or -1 (logged; process_free still to be called). */
int process_init(struct process *p, const struct config *cfg, unsigned nworkers);

/* Starts the workers, each on its own thread with its own loop, runs the
 * main loop until every worker has exited, joins them. The exit status:
 * 0 after a drain, 1 if a worker could not start. */
int process_run(struct process *p);

/* Closes the socket and removes the pid file. */
void process_free(struct process *p);

/* A listening socket on spec (HOST:PORT), SO_REUSEPORT if asked; option
 * names it in errors. The fd, or -1 (logged). */
int process_listen_socket(const char *spec, int backlog, bool reuseport, const char *option);

/* The address fd is bound to, as text (port 0 becomes the real one). */
void process_bound_address(int fd, char *text, size_t size);

/* From a worker's thread (thread-safe, asynchronous): */
void process_worker_ready(struct process *p, struct worker *w);
/* The worker's thread is about to return: w is the process's again. */
void process_worker_exited(struct process *p, struct worker *w);
/* A script called os.exit: drain every worker, then exit 0, as SIGTERM. */
void process_request_drain(struct process *p);

#endif
