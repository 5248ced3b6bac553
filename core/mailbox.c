#include "mailbox.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

#define FIRST_CAP 16

/* Takes the whole queue at once (swapping two arrays, so the steady state
 * allocates nothing) and handles it outside the lock: a handler may post,
 * even to this mailbox, without deadlocking. */
static void on_wake(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    struct mailbox *mb = a->data;
    for (;;) {
        pthread_mutex_lock(&mb->lock);
        struct mailbox_msg *batch = mb->inbox;
        size_t n = mb->len, cap = mb->cap;
        mb->inbox = mb->taken;
        mb->cap = mb->taken_cap;
        mb->len = 0;
        pthread_mutex_unlock(&mb->lock);
        mb->taken = batch;
        mb->taken_cap = cap;
        if (n == 0)
            return;
        for (size_t i = 0; i < n; i++)
            mb->fn(mb->ctx, batch[i]);
    }
}

int mailbox_init(struct mailbox *mb, struct ev_loop *loop, mailbox_fn fn, void *ctx)
{
    memset(mb, 0, sizeof *mb);
    int rc = pthread_mutex_init(&mb->lock, NULL);
    if (rc != 0) {
        log_error("pthread_mutex_init: %s", strerror(rc));
        return -1;
    }
    mb->inbox = malloc(sizeof *mb->inbox * FIRST_CAP);
    mb->taken = malloc(sizeof *mb->taken * FIRST_CAP);
    if (!mb->inbox || !mb->taken) {
        free(mb->inbox);
        free(mb->taken);
        pthread_mutex_destroy(&mb->lock);
        return -1;
    }
    mb->cap = mb->taken_cap = FIRST_CAP;
    mb->loop = loop;
    mb->fn = fn;
    mb->ctx = ctx;
    ev_async_init(&mb->wake, on_wake);
    mb->wake.data = mb;
    ev_async_start(loop, &mb->wake);
    return 0;
}

int mailbox_post(struct mailbox *mb, int cmd, void *arg)
{
    pthread_mutex_lock(&mb->lock);
    if (mb->len == mb->cap) {
        size_t cap = mb->cap * 2;
        struct mailbox_msg *grown = realloc(mb->inbox, sizeof *grown * cap);
        if (!grown) {
            pthread_mutex_unlock(&mb->lock);
            log_error("out of memory posting a command to a worker or the process");
            return -1;
        }
        mb->inbox = grown;
        mb->cap = cap;
    }
    mb->inbox[mb->len++] = (struct mailbox_msg){ cmd, arg };
    pthread_mutex_unlock(&mb->lock);
    /* Thread-safe, and coalesced: one wake-up takes every message. */
    ev_async_send(mb->loop, &mb->wake);
    return 0;
}

void mailbox_free(struct mailbox *mb)
{
    if (!mb->loop)
        return;
    ev_async_stop(mb->loop, &mb->wake);
    free(mb->inbox);
    free(mb->taken);
    pthread_mutex_destroy(&mb->lock);
    mb->loop = NULL;
}
