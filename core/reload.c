#include "reload.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <ev.h>

#include "log.h"
#include "lua_api.h"
#include "worker.h"

struct reloader {
    struct worker *w;
    int fd;
    ev_io io;
    ev_timer debounce;
};

static void on_debounced(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct reloader *r = t->data;
    log_info("apps directory changed: reloading");
    lua_api_reload(r->w->vm);
}

static void on_inotify(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    struct reloader *r = io->data;
    char events[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool relevant = false;
    for (;;) {
        ssize_t n = read(r->fd, events, sizeof events);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                log_warn("reading inotify events: %s", strerror(errno));
            break;
        }
        for (char *p = events; p < events + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            size_t len = ev->len ? strlen(ev->name) : 0;
            /* Only scripts matter; editors' swap and backup files do not. */
            if (len > 4 && strcmp(ev->name + len - 4, ".lua") == 0)
                relevant = true;
            p += sizeof *ev + ev->len;
        }
    }
    if (relevant) {
        ev_timer_stop(loop, &r->debounce);
        ev_timer_start(loop, &r->debounce);   /* restarts the quiet period */
    }
}

struct reloader *reloader_new(struct worker *w, const char *dir, double debounce)
{
    struct reloader *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->w = w;
    r->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (r->fd < 0 || inotify_add_watch(r->fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO |
                                       IN_MOVED_FROM | IN_DELETE | IN_CREATE) < 0) {
        log_warn("cannot watch %s (%s): reload with SIGHUP instead", dir, strerror(errno));
        if (r->fd >= 0 && close(r->fd) < 0)
            log_warn("close: %s", strerror(errno));
        free(r);
        return NULL;
    }
    ev_io_init(&r->io, on_inotify, r->fd, EV_READ);
    r->io.data = r;
    ev_io_start(w->loop, &r->io);
    ev_timer_init(&r->debounce, on_debounced, debounce, 0);
    r->debounce.data = r;
    return r;
}

void reloader_stop(struct reloader *r)
{
    if (!r)
        return;
    ev_io_stop(r->w->loop, &r->io);
    ev_timer_stop(r->w->loop, &r->debounce);
}

void reloader_free(struct reloader *r)
{
    if (!r)
        return;
    reloader_stop(r);
    if (close(r->fd) < 0)
        log_warn("close: %s", strerror(errno));
    free(r);
}
