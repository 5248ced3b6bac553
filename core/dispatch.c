/* What a worker does with what its transport hands it: a request goes to
 * the Lua runtime; a stream going away leaves its channels and, when a
 * script asked, tells the runtime. The one place where the transport
 * meets the rest (conn.h's struct conn_handler). */
#include "dispatch.h"

#include "channel.h"
#include "conn.h"
#include "lua_api.h"
#include "quota.h"
#include "tags.h"
#include "worker.h"

static void dispatch_request(struct conn *c)
{
    lua_api_dispatch(c->w->vm, c);
}

static void stream_gone(struct conn *c)
{
    if (c->lua_watch)
        lua_api_stream_closed(c->w->vm, c);
    channels_unsubscribe(c->w->channels, conn_stream(c));
}

void conn_release_quota(struct conn *c)
{
    if (c->quota_held) {
        c->quota_held = false;
        quota_release(c->quota_key);
    }
}

/* An answer, not a stream: the route's quota slot is free again. */
static void answered(struct conn *c)
{
    conn_release_quota(c);
}

/* Whatever ended it, its quota slot and its tags go with it. */
static void gone(struct conn *c)
{
    conn_release_quota(c);
    tags_remove(c->tags);
    c->tags = NULL;
}

const struct conn_handler worker_handler = {
    .dispatch = dispatch_request,
    .stream_gone = stream_gone,
    .answered = answered,
    .gone = gone,
};
