#include "reload.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ev.h>

#include "log.h"

/* What happens inside the apps directory (or the directory it links to). */
#define DIR_EVENTS (IN_CLOSE_WRITE | IN_MODIFY | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | \
                    IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
/* What happens to the apps directory's own name in its parent: a release
 * swap (`ln -sfn v2 tmp && mv -T tmp current`) is a rename onto it. */
#define PARENT_EVENTS (IN_CREATE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_ONLYDIR)

struct reloader {
    struct ev_loop *loop;
    void (*reload)(void *ctx);
    void *ctx;
    const char *dir;       /* --apps as given: may be a symbolic link */
    char *parent;          /* the directory that holds dir's name */
    char *base;            /* dir's last component */
    char *target;          /* what dir resolved to at the last reload */
    int fd;
    int wd_dir;            /* watch on the resolved directory, -1 if none */
    int wd_parent;         /* watch on parent, -1 if none */
    double quiet;          /* --reload-debounce */
    ev_io io;
    ev_timer debounce;
};

/* Points the directory watch at what dir names now. inotify_add_watch
 * follows symbolic links, and returns the same descriptor for the same
 * directory, so a new descriptor means dir now leads elsewhere. */
static void watch_target(struct reloader *r)
{
    int wd = inotify_add_watch(r->fd, r->dir, DIR_EVENTS);
    if (wd < 0) {
        /* Mid-swap or removed: keep what we had; the next event or SIGHUP
         * tries again. (At start, reloader_new says it.) */
        if (r->wd_dir >= 0)
            log_warn("cannot watch %s: %s", r->dir, strerror(errno));
        return;
    }
    char *target = realpath(r->dir, NULL);
    if (wd != r->wd_dir) {
        /* The old directory may be gone already (its watch with it). */
        if (r->wd_dir >= 0 && inotify_rm_watch(r->fd, r->wd_dir) < 0 && errno != EINVAL)
            log_warn("inotify_rm_watch: %s", strerror(errno));
        if (r->wd_dir >= 0)
            log_info("apps directory %s now leads to %s: watching it", r->dir,
                     target ? target : "?");
        r->wd_dir = wd;
    }
    free(r->target);
    r->target = target;
}

void reloader_reload(struct reloader *r)
{
    ev_timer_stop(r->loop, &r->debounce);
    watch_target(r);
    r->reload(r->ctx);
}

static void on_debounced(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct reloader *r = t->data;
    log_info("apps directory changed: reloading");
    reloader_reload(r);
}

static bool ends_with_lua(const char *name)
{
    size_t len = strlen(name);
    return len > 4 && strcmp(name + len - 4, ".lua") == 0;
}

/* Whether one event inside the watched directory can change what is served. */
static bool relevant_in_dir(struct reloader *r, const struct inotify_event *ev)
{
    if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED | IN_Q_OVERFLOW))
        return true;
    if (!ev->len)
        return false;
    /* Scripts matter; editors' swap and backup files do not. */
    if (ends_with_lua(ev->name))
        return true;
    /* A symbolic link appearing is how Kubernetes swaps a ConfigMap's
     * files at once (its "..data" link, which every script links through). */
    if (ev->mask & (IN_CREATE | IN_MOVED_TO)) {
        struct stat st;
        int dfd = open(r->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        bool link = dfd >= 0 && fstatat(dfd, ev->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                    S_ISLNK(st.st_mode);
        if (dfd >= 0 && close(dfd) < 0)
            log_warn("close: %s", strerror(errno));
        return link;
    }
    return false;
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
            if (ev->wd == r->wd_parent && ev->wd >= 0)
                relevant |= ev->len && strcmp(ev->name, r->base) == 0;
            else
                relevant |= relevant_in_dir(r, ev);
            p += sizeof *ev + ev->len;
        }
    }
    if (relevant) {
        /* Restart the quiet period from now. A one-shot timer restarted
         * without ev_timer_set keeps its old, already expired time and
         * fires at once: every change after the first reload would reload
         * immediately, and a script deleted then rewritten would serve 404
         * in between. */
        ev_timer_stop(loop, &r->debounce);
        ev_timer_set(&r->debounce, r->quiet, 0);
        ev_timer_start(loop, &r->debounce);
    }
}

/* dir split into its parent directory and last component ("apps/" and
 * "x/apps" alike); false if there is no parent to watch ("/"). */
static bool split_path(const char *dir, char **parent, char **base)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/')
        start--;
    if (start == len)
        return false;
    *base = strndup(dir + start, len - start);
    if (start == 0)
        *parent = strdup(".");
    else
        *parent = strndup(dir, start == 1 ? 1 : start - 1);
    if (!*base || !*parent) {
        free(*base);
        free(*parent);
        return false;
    }
    return true;
}

struct reloader *reloader_new(struct ev_loop *loop, const char *dir, double debounce,
                              void (*reload)(void *ctx), void *ctx)
{
    struct reloader *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->loop = loop;
    r->reload = reload;
    r->ctx = ctx;
    r->dir = dir;
    r->quiet = debounce;
    r->wd_dir = r->wd_parent = -1;
    r->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (r->fd >= 0)
        watch_target(r);
    if (r->fd < 0 || r->wd_dir < 0) {
        log_warn("cannot watch %s (%s): reload with SIGHUP instead", dir, strerror(errno));
        if (r->fd >= 0 && close(r->fd) < 0)
            log_warn("close: %s", strerror(errno));
        free(r->target);
        free(r);
        return NULL;
    }
    /* Without the parent's watch a swapped link goes unnoticed until a
     * SIGHUP; everything else still works. */
    if (split_path(dir, &r->parent, &r->base) && strcmp(r->base, ".") != 0 &&
        strcmp(r->base, "..") != 0) {
        r->wd_parent = inotify_add_watch(r->fd, r->parent, PARENT_EVENTS);
        if (r->wd_parent < 0)
            log_warn("cannot watch %s for %s being replaced: %s", r->parent, r->base,
                     strerror(errno));
    }
    ev_io_init(&r->io, on_inotify, r->fd, EV_READ);
    r->io.data = r;
    ev_io_start(loop, &r->io);
    ev_timer_init(&r->debounce, on_debounced, debounce, 0);
    r->debounce.data = r;
    return r;
}

void reloader_stop(struct reloader *r)
{
    if (!r)
        return;
    ev_io_stop(r->loop, &r->io);
    ev_timer_stop(r->loop, &r->debounce);
}

void reloader_free(struct reloader *r)
{
    if (!r)
        return;
    reloader_stop(r);
    if (close(r->fd) < 0)
        log_warn("close: %s", strerror(errno));
    free(r->parent);
    free(r->base);
    free(r->target);
    free(r);
}
