/* sluice.core, quotas, load shedding and admin actions: core.quota_take
 * (a route's quota, process-wide), core.shed (whether a new stream must
 * be refused), core.tag and core.disconnect (stream tags, ending tagged
 * streams on every worker), core.admin_stats (their figures). */
#include "lua_api_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "clock.h"
#include "conn.h"
#include "counter.h"
#include "disconnect.h"
#include "dispatch.h"
#include "keyhash.h"
#include "log.h"
#include "metrics.h"
#include "process.h"
#include "quota.h"
#include "redis_bus.h"
#include "tags.h"
#include "worker.h"

static struct worker *all_workers(struct worker *w, unsigned *n)
{
    /* The test kit's core has one worker and no process. */
    *n = w->proc ? w->proc->nworkers : 1;
    return w->proc ? w->proc->workers : w;
}

/* core.quota_take(h, route, key, streams, rate, burst, is_stream)
 * -> "ok" | "streams" | "rate" | "full", retry_after (whole seconds, 0:
 * the caller's choice). With is_stream and "ok", the connection holds a
 * stream slot until it answers or its stream ends. */
int l_quota_take(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    size_t rlen, klen;
    const char *route = luaL_checklstring(L, 2, &rlen);
    const char *key = luaL_checklstring(L, 3, &klen);
    lua_Number streams = luaL_optnumber(L, 4, 0);
    lua_Number rate = luaL_optnumber(L, 5, 0);
    lua_Number burst = luaL_optnumber(L, 6, 0);
    bool stream = lua_toboolean(L, 7);
    if (!(streams >= 0 && streams < 4294967296.0) || !(rate >= 0 && rate < 1e9) ||
        !(burst >= 0 && burst < 1e9))
        return luaL_error(L, "quota: limits out of range");
    if (!c) {
        lua_pushliteral(L, "ok");
        return 1;
    }
    struct quota_limits lim = { .streams = (uint32_t)streams, .rate = rate,
                                .burst = burst >= 1 ? burst : 1 };
    uint64_t k = keyhash2(route, rlen, key, klen);
    double retry = 0;
    /* One slot per connection: a keep-alive request after a refused
     * stream never holds two. */
    conn_release_quota(c);
    enum quota_verdict v = quota_take(k, &lim, stream && lim.streams, clock_mono(), &retry);
    static const char *const names[] = { "ok", "streams", "rate", "full" };
    if (v == QUOTA_OK && stream && lim.streams) {
        c->quota_key = k;
        c->quota_held = true;
    }
    if (v != QUOTA_OK)
        metrics_quota_refused(route, rlen, (int)v);   /* route: "METHOD pattern" */
    lua_pushstring(L, names[v]);
    lua_pushnumber(L, retry);
    return 2;
}

/* Why a new stream must be refused now: "streams" (--max-streams),
 * "queued_bytes" (--shed-queued-bytes) or NULL. */
static const char *shedding(struct worker *w)
{
    unsigned n;
    struct worker *all = all_workers(w, &n);
    return metrics_shed_reason(w->cfg, all, n);
}

/* core.shed() -> nil | reason: a new stream is about to open; when it must
 * be refused (503), says why and counts the refusal. */
int l_shed(lua_State *L)
{
    struct worker *w = vm_of(L)->w;
    const char *why = shedding(w);
    if (!why)
        return 0;
    counter_add(why[0] == 's' ? &w->stats.shed_streams : &w->stats.shed_queued, 1);
    lua_pushstring(L, why);
    return 1;
}

static bool valid_tag_name(const char *s, size_t n)
{
    if (n == 0 || n > TAG_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_'))
            return false;
    }
    return true;
}

/* core.tag(h, name, value, channels) -> true | false (more than TAGS_MAX
 * names). channels: the stream's channels so far (when it is tagged
 * after subscribing); later subscriptions are added by core.subscribe. */
int l_tag(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    struct conn *c = conn_arg(L, 1);
    size_t nlen, vlen;
    const char *name = luaL_checklstring(L, 2, &nlen);
    const char *value = luaL_checklstring(L, 3, &vlen);
    if (!valid_tag_name(name, nlen))
        return luaL_error(L, "tag name must be 1-%d of a-z, 0-9, _", TAG_NAME_MAX);
    if (vlen > TAG_VALUE_MAX)
        return luaL_error(L, "tag value longer than %d bytes", TAG_VALUE_MAX);
    if (!c || c->state != CONN_STREAMING) {
        lua_pushboolean(L, 1);   /* gone: nothing to find any more */
        return 1;
    }
    if (!c->tags) {
        c->tags = tags_new(vm->w->id, worker_handle(vm->w, c));
        if (!c->tags)
            return luaL_error(L, "out of memory tagging a stream");
    }
    if (lua_istable(L, 4)) {
        int n = (int)lua_objlen(L, 4);
        for (int i = 1; i <= n; i++) {
            lua_rawgeti(L, 4, i);
            size_t len;
            const char *ch = lua_tolstring(L, -1, &len);
            if (ch && !tags_add_channel(c->tags, ch, len))
                return luaL_error(L, "out of memory tagging a stream");
            lua_pop(L, 1);
        }
    }
    lua_pushboolean(L, tags_set(c->tags, name, nlen, value, vlen));
    return 1;
}

/* In cluster mode, r to the other nodes (the control channel): true when
 * handed to Redis, false when Redis is unavailable (logged: a revoked
 * user's streams on other nodes stay open). */
static bool tell_other_nodes(struct worker *w, const struct disconnect_req *r)
{
    size_t len;
    char *body = disconnect_encode(r, &len);
    int rc = body ? redis_bus_control(w->proc->redis, "disconnect", body, len) : -1;
    free(body);
    if (rc != 0)
        log_warn("disconnect: %s; only this node's streams were disconnected",
                 rc == BUS_UNAVAILABLE ? "redis unavailable" : "out of memory");
    return rc == 0;
}

/* core.disconnect(names, values, channel, event, data) -> streams found
 * on this node [, whether the other nodes were told (cluster mode)] */
int l_disconnect(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    struct disconnect_req r = { 0 };
    r.channel = opt_lstring(L, 3, &r.channel_len);
    r.event = luaL_checklstring(L, 4, &r.event_len);
    r.data = luaL_checklstring(L, 5, &r.data_len);
    int n = (int)lua_objlen(L, 1);
    if (n < 1 || n > (int)DISCONNECT_TAGS_MAX)
        return luaL_error(L, "disconnect: 1 to %d tags", (int)DISCONNECT_TAGS_MAX);
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        lua_rawgeti(L, 2, i);
        /* Strings only (no number converted on the stack): the tables
         * keep them alive until we return. */
        if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "disconnect: tags must be strings");
        r.name[r.ntags] = lua_tolstring(L, -2, &r.name_len[r.ntags]);
        r.value[r.ntags] = lua_tolstring(L, -1, &r.value_len[r.ntags]);
        r.ntags++;
        lua_pop(L, 2);
    }
    struct worker *w = vm->w;
    struct luavm_charge charge;
    luavm_uncharged_begin(vm, &charge);   /* the server's work, as a publish */
    long found = disconnect_streams(w, &r);
    bool cluster = w->proc && w->proc->redis;
    bool told = found >= 0 && cluster && tell_other_nodes(w, &r);
    luavm_uncharged_end(vm, &charge);
    if (found < 0)
        return luaL_error(L, "out of memory disconnecting streams");
    lua_pushnumber(L, (lua_Number)found);
    if (!cluster)
        return 1;
    lua_pushboolean(L, told);
    return 2;
}

static void set_num(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

/* core.admin_stats(): quotas, shedding and admin disconnects of the whole
 * process (sluice.stats() merges them in). */
int l_admin_stats(lua_State *L)
{
    struct worker *w = vm_of(L)->w;
    unsigned n;
    struct worker *all = all_workers(w, &n);
    uint64_t streams = 0, queued = 0, shed_s = 0, shed_q = 0, disc = 0;
    for (unsigned i = 0; i < n; i++) {
        streams += gauge_get(&all[i].stats.streams);
        queued += counter_get(&all[i].stats.queued_bytes);
        shed_s += counter_get(&all[i].stats.shed_streams);
        shed_q += counter_get(&all[i].stats.shed_queued);
        disc += counter_get(&all[i].stats.admin_disconnected);
    }
    const char *why = shedding(w);
    lua_createtable(L, 0, 12);
    lua_pushboolean(L, why != NULL);
    lua_setfield(L, -2, "shedding");
    if (why) {
        lua_pushstring(L, why);
        lua_setfield(L, -2, "shedding_reason");
    }
    lua_createtable(L, 0, 2);
    set_num(L, "streams", (double)shed_s);
    set_num(L, "queued_bytes", (double)shed_q);
    lua_setfield(L, -2, "shed_refused");
    set_num(L, "open_streams", (double)streams);
    set_num(L, "max_streams", (double)w->cfg->max_streams);
    set_num(L, "shed_queued_bytes", (double)w->cfg->shed_queued_bytes);
    if (w->cfg->shed_queued_bytes)
        set_num(L, "queued_bytes", (double)queued);
    set_num(L, "admin_disconnected", (double)disc);
    set_num(L, "tagged_streams", (double)tags_count());
    struct quota_counts q;
    quota_counts(&q);
    lua_createtable(L, 0, 4);
    set_num(L, "keys", (double)q.keys);
    set_num(L, "max_keys", (double)w->cfg->quota_keys);
    set_num(L, "open", (double)q.open);
    set_num(L, "evicted", (double)q.evicted);
    lua_createtable(L, 0, 3);
    set_num(L, "streams", (double)q.refused_streams);
    set_num(L, "rate", (double)q.refused_rate);
    set_num(L, "full", (double)q.refused_full);
    lua_setfield(L, -2, "refused");
    lua_setfield(L, -2, "quota");
    return 1;
}
