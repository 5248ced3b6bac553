#include "signals.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "log.h"

static pthread_t thread;
static bool started;
static double grace_seconds;
static const char *pid_path;
/* Signals seen before the loop could take them (bit per signal number). */
static atomic_uint early;
static atomic_bool loop_ready;

static void watched(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGUSR1);   /* reopen the access log */
}

int signals_block(void)
{
    sigset_t set;
    watched(&set);
    int rc = pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (rc != 0) {
        log_error("pthread_sigmask: %s", strerror(rc));
        return -1;
    }
    return 0;
}

/* The loop did not finish its shutdown in time: it is stuck in a script or
 * in C. Nothing here may wait on what the stuck thread might hold (stdio's
 * lock, the allocator): one write(2), unlink(2), _exit(2). */
static _Noreturn void hard_exit(int sig)
{
    log_at(LOG_ERROR, "%s: shutdown did not finish within --shutdown-grace %g s + %g s "
            "(the event loop is stuck); exiting now", sig == SIGINT ? "SIGINT" : "SIGTERM",
            grace_seconds, SIGNALS_EXIT_MARGIN);
    if (pid_path)
        (void)unlink(pid_path);
    _exit(1);
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *run(void *arg)
{
    (void)arg;
    sigset_t set;
    watched(&set);
    int stop_sig = 0;
    double deadline = 0;
    /* Cancelled (signals_stop) only while waiting, never inside a log call
     * holding stdio's lock. */
    int ignored;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &ignored);
    for (;;) {
        int sig;
        if (!stop_sig) {
            pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &ignored);
            int rc = sigwait(&set, &sig);
            pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &ignored);
            if (rc != 0) {
                log_warn("sigwait: %s", strerror(rc));
                continue;
            }
        } else {
            double left = deadline - mono_now();
            if (left <= 0)
                hard_exit(stop_sig);
            struct timespec wait = { (time_t)left, (long)((left - (double)(time_t)left) * 1e9) };
            pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &ignored);
            sig = sigtimedwait(&set, NULL, &wait);
            pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &ignored);
            if (sig < 0) {
                if (errno == EAGAIN)
                    hard_exit(stop_sig);
                if (errno != EINTR)
                    log_warn("sigtimedwait: %s", strerror(errno));
                continue;
            }
        }
        if ((sig == SIGTERM || sig == SIGINT) && !stop_sig) {
            stop_sig = sig;
            deadline = mono_now() + grace_seconds + SIGNALS_EXIT_MARGIN;
        }
        /* Until the loop has its watchers, a fed signal would be dropped:
         * keep it for signals_loop_ready. */
        if (!atomic_load(&loop_ready))
            atomic_fetch_or(&early, 1u << sig);
        ev_feed_signal(sig);
    }
    return NULL;
}

int signals_start(double grace, const char *pid_file)
{
    grace_seconds = grace;
    pid_path = pid_file;
    /* The thread takes no other signal: the CPU budget's timer signal is
     * aimed at a worker's thread, and nothing else may land here. */
    sigset_t all, old;
    sigfillset(&all);
    int rc = pthread_sigmask(SIG_BLOCK, &all, &old);
    if (rc == 0) {
        rc = pthread_create(&thread, NULL, run, NULL);
        int rc2 = pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (rc2 != 0)
            log_warn("pthread_sigmask: %s", strerror(rc2));
    }
    if (rc != 0) {
        log_error("cannot start the signal thread: %s", strerror(rc));
        return -1;
    }
    rc = pthread_setname_np(thread, "signals");
    if (rc != 0)
        log_debug("naming the signal thread: %s", strerror(rc));
    started = true;
    return 0;
}

void signals_loop_ready(void)
{
    /* Starting an ev_signal watcher may unblock its signal in this thread
     * (libev's EVFLAG_NOSIGMASK is meant to prevent that, but libev 4.33
     * tests it the wrong way round): block them again, so that only the
     * signal thread receives them whatever the libev version. */
    if (signals_block() < 0)
        log_warn("SIGTERM may not end a stuck loop: its signals stay unblocked");
    atomic_store(&loop_ready, true);
    unsigned pending = atomic_exchange(&early, 0);
    /* A signal fed twice (here and by the thread) is harmless: stopping is
     * idempotent, and a second reload finds nothing changed. */
    static const int order[] = { SIGHUP, SIGUSR1, SIGINT, SIGTERM };
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (pending & (1u << order[i]))
            ev_feed_signal(order[i]);
}

void signals_stop(void)
{
    if (!started)
        return;
    started = false;
    int rc = pthread_cancel(thread);
    if (rc == 0)
        rc = pthread_join(thread, NULL);
    if (rc != 0)
        log_warn("stopping the signal thread: %s", strerror(rc));
}
