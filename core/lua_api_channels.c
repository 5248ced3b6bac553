/* sluice.core, channels: publish, subscribe a stream, subscriber counts,
 * history limits, and framing an event for a masked view (the runtime's
 * transform). Talks to channels and streams only. */
#include "lua_api_internal.h"

#include <lauxlib.h>

#include "bus.h"
#include "channel.h"
#include "conn.h"
#include "frame.h"
#include "luavm.h"
#include "metrics.h"
#include "numfmt.h"
#include "sse.h"
#include "tags.h"
#include "worker.h"

/* ---- channels --------------------------------------------------------- */

/* core.publish(channel, event, data, wait) -> id, reached. Cluster mode:
 * true, 0 once queued for Redis; with wait, true, 0, ticket: Redis's
 * answer comes back to the runtime's published hook under ticket. */
int l_publish(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    size_t clen, dlen;
    const char *ch = luaL_checklstring(L, 1, &clen);
    struct sse_event ev = { .retry_ms = -1 };
    ev.event = opt_lstring(L, 2, &ev.event_len);
    const char *data = luaL_optlstring(L, 3, "", &dlen);
    const char *bad = sse_event_invalid(&ev);
    if (bad)
        return luaL_error(L, "cannot publish: %s", bad);
    struct publish_result r = { .ticket = 0 };
    if (lua_toboolean(L, 4))   /* only the runtime's handler coroutine asks */
        r.ticket = ++vm->last_ticket;
    /* Framing and fan-out are not the script's CPU: charged to it, a big
     * publish would take effect and then fail the script with a 500, and
     * a client that retries would publish twice. */
    struct luavm_charge charge;
    luavm_uncharged_begin(vm, &charge);
    int rc = channels_publish(vm->w->channels, ch, clen, ev.event, ev.event_len,
                              data, dlen, &r);
    luavm_uncharged_end(vm, &charge);
    if (rc == -2)
        return luaL_error(L, "cannot publish from inside a view transform");
    if (rc == BUS_UNAVAILABLE) {   /* the app answers 503: not a script error */
        lua_pushnil(L);
        lua_pushliteral(L, "redis unavailable");
        return 2;
    }
    if (rc == BUS_QUEUED) {   /* cluster mode: Redis assigns the id later */
        lua_pushboolean(L, 1);
        lua_pushinteger(L, 0);
        if (!r.ticket)
            return 2;
        lua_pushnumber(L, (lua_Number)r.ticket);
        return 3;
    }
    if (rc < 0)
        return luaL_error(L, "out of memory publishing to %s", ch);
    lua_pushnumber(L, (lua_Number)r.id);
    lua_pushinteger(L, r.reached);
    return 2;
}

/* core.subscribe(h, {channel...}, {view...}, last_id|nil, last_raw) */
int l_subscribe(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    struct conn *c = conn_arg(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    bool has_last = !lua_isnoneornil(L, 4);
    lua_Number last = has_last ? luaL_checknumber(L, 4) : 0;
    const char *last_raw = has_last ? luaL_optstring(L, 5, "") : NULL;
    int n = (int)lua_objlen(L, 2);
    if (n > 64)
        return luaL_error(L, "a stream can subscribe to at most 64 channels");
    if (channels_framing(vm->w->channels))
        return luaL_error(L, "cannot subscribe from inside a view transform");
    if (!c || c->state != CONN_STREAMING) {
        lua_pushboolean(L, 0);
        return 1;
    }
    struct subscription_req reqs[64];
    for (int i = 0; i < n; i++) {
        lua_rawgeti(L, 2, i + 1);
        /* A string already: its bytes must stay owned by the table. */
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "channel names must be strings");
        reqs[i].name = lua_tolstring(L, -1, &reqs[i].name_len);
        lua_pop(L, 1);   /* the string stays alive in the table */
        lua_rawgeti(L, 3, i + 1);
        reqs[i].view = (int)luaL_optinteger(L, -1, 0);
        lua_pop(L, 1);
    }
    /* Out of range is "not one of ours", and must not reach the cast. */
    if (!(last >= 0 && last < 9007199254740992.0))
        last = 0;
    /* A tagged stream's channels are what sluice.disconnect{channel=} matches. */
    for (int i = 0; c->tags && i < n; i++)
        if (!tags_add_channel(c->tags, reqs[i].name, reqs[i].name_len))
            return luaL_error(L, "out of memory subscribing");
    int rc = channels_subscribe(vm->w->channels, &c->st, reqs, n, last_raw, (uint64_t)last);
    if (rc < 0)
        return luaL_error(L, "out of memory subscribing");
    if (has_last)   /* channel.c has said whether it could replay exactly */
        metrics_resume(vm->w->id, c->st.resume_reset);
    lua_pushboolean(L, c->state == CONN_STREAMING);
    return 1;
}

int l_subscribers(lua_State *L)
{
    size_t len;
    const char *ch = luaL_checklstring(L, 1, &len);
    lua_pushinteger(L, channels_subscribers(vm_of(L)->w->channels, ch, len));
    return 1;
}

/* core.history(prefix, max_events, ttl_seconds) */
int l_history(lua_State *L)
{
    const char *prefix = luaL_checkstring(L, 1);
    lua_Integer len = luaL_checkinteger(L, 2);
    lua_Number ttl = luaL_checknumber(L, 3);
    if (len < 0 || ttl <= 0)
        return luaL_error(L, "history needs a size >= 0 and a ttl > 0");
    if (channels_configure(vm_of(L)->w->channels, prefix, (size_t)len, ttl) < 0)
        return luaL_error(L, "out of memory");
    return 0;
}

/* Redis answered a publish the runtime waits for: its published hook
 * gets (ticket, id, reached) or (ticket, nil, "redis unavailable"). */
void lua_api_published(void *ctx, const struct bus_answer *a)
{
    struct luavm *vm = ctx;
    lua_State *L = vm->L;
    if (vm->ref_published == LUA_NOREF)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_published);
    lua_pushnumber(L, (lua_Number)a->ticket);
    if (a->ok) {
        lua_pushnumber(L, (lua_Number)a->id);
        lua_pushinteger(L, a->reached);
    } else {
        lua_pushnil(L);
        lua_pushliteral(L, "redis unavailable");
    }
    luavm_call(vm, 3, 0, "publish answer");
}

/* Frames an event for a masked view by asking the runtime's transform. */
struct frame *lua_api_frame_for_view(void *ctx, int view, const struct event_src *src)
{
    struct luavm *vm = ctx;
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_transform);
    lua_pushinteger(L, view);
    if (src->name)
        lua_pushlstring(L, src->name, src->name_len);
    else
        lua_pushnil(L);
    lua_pushlstring(L, src->data, src->data_len);
    if (!luavm_call(vm, 3, 1, "view transform"))
        return NULL;
    size_t dlen;
    const char *data = lua_tolstring(L, -1, &dlen);
    struct frame *f = NULL;
    if (data) {
        char id[24];
        size_t n = fmt_dec(id, src->id);
        struct sse_event ev = { .id = id, .id_len = n,
                                .event = src->name, .event_len = src->name_len,
                                .data = data, .data_len = dlen, .retry_ms = -1 };
        f = frame_sse(&ev);
        if (f)
            f->flags |= FRAME_EVENT;
    }
    lua_pop(L, 1);
    return f;
}
