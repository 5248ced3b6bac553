/* What a worker does with what its transport hands it: a request goes to
 * the Lua runtime; a stream going away leaves its channels and, when a
 * script asked, tells the runtime. The one place where the transport
 * meets the rest (conn.h's struct conn_handler). */
#include "dispatch.h"

#include "channel.h"
#include "conn.h"
#include "lua_api.h"
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

const struct conn_handler worker_handler = {
    .dispatch = dispatch_request,
    .stream_gone = stream_gone,
};
