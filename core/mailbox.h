/* A command queue between threads: any thread posts, the thread that runs
 * the owning loop takes. A mutex guards the queue and an ev_async wakes
 * the loop, so a post costs one lock and at most one write(2), and the
 * loop handles every command in its own thread, between its callbacks.
 * The process has one (workers tell it they are ready, exited, or that a
 * script asked to stop), and so has every worker (reload, drain; later the
 * events published on other workers). */
#ifndef SLUICE_MAILBOX_H
#define SLUICE_MAILBOX_H

#include <ev.h>
#include <pthread.h>
#include <stddef.h>

struct mailbox_msg {
    int cmd;             /* the owner's own enum */
    void *arg;
};

/* Called in the owner's thread, once per message, in the order posted. */
typedef void (*mailbox_fn)(void *ctx, struct mailbox_msg msg);

struct mailbox {
    pthread_mutex_t lock;
    struct mailbox_msg *inbox;   /* posted, not yet taken (under lock) */
    size_t len, cap;
    struct mailbox_msg *taken;   /* the batch being handled (owner only) */
    size_t taken_cap;
    struct ev_loop *loop;
    ev_async wake;
    mailbox_fn fn;
    void *ctx;
};

/* Starts the wake-up watcher on loop. Call before the loop runs in another
 * thread and before anyone may post (an ev_async must be started before it
 * is sent). 0, or -1 when out of memory. */
int mailbox_init(struct mailbox *mb, struct ev_loop *loop, mailbox_fn fn, void *ctx);

/* Any thread. 0, or -1 when out of memory (logged). */
int mailbox_post(struct mailbox *mb, int cmd, void *arg);

/* The owner, once no thread may post any more and the loop is not running
 * in another thread: stops the watcher and frees the queue; messages still
 * queued are dropped. */
void mailbox_free(struct mailbox *mb);

#endif
