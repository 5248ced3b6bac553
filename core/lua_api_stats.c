/* sluice.core, counters: core.stats() for sluice.stats(), for the whole
 * process: each worker's counters (one writer each, read with relaxed
 * loads: counter.h) summed, the bus's counts, and the connections and
 * streams of each worker; core.stats("prometheus") for sluice.metrics(). */
#include "lua_api_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "channel.h"
#include "counter.h"
#include "luavm.h"
#include "metrics.h"
#include "process.h"
#include "redis_bus.h"
#include "worker.h"

static void set_int(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

/* core.stats("prometheus"): the admin listener's /metrics text (the
 * whole process, metrics.c), for sluice.metrics(); nil without a process
 * (the test kit's core), whose figures the Lua side renders instead. */
static int prometheus_text(lua_State *L, struct worker *w)
{
    if (!w->proc || !metrics_worker(0)) {
        lua_pushnil(L);
        return 1;
    }
    struct buf b = { 0 };
    metrics_render(w->proc, &b);
    if (b.failed) {
        buf_free(&b);
        return luaL_error(L, "out of memory rendering the metrics");
    }
    lua_pushlstring(L, b.data ? b.data : "", b.len);
    buf_free(&b);
    return 1;
}

int l_stats(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    struct worker *w = vm->w;
    if (lua_type(L, 1) == LUA_TSTRING && !strcmp(lua_tostring(L, 1), "prometheus"))
        return prometheus_text(L, w);
    /* The test kit's core has one worker and no process. */
    struct worker *all = w->proc ? w->proc->workers : w;
    unsigned n = w->proc ? w->proc->nworkers : 1;
    size_t nch, nsubs, nev, hbytes;
    uint64_t published, delivered;
    channels_counts(w->channels, &nch, &nsubs, &nev, &hbytes);
    channels_traffic(w->channels, &published, &delivered);
    uint64_t accepted = 0, refused = 0, requests = 0, opened = 0, closed = 0, gapped = 0;
    uint64_t conns = 0, delivered_all = 0;
    lua_createtable(L, 0, 18);
    lua_createtable(L, (int)n, 0);
    for (unsigned i = 0; i < n; i++) {
        struct worker *x = &all[i];
        accepted += counter_get(&x->stats.accepted);
        refused += counter_get(&x->stats.refused_busy);
        requests += counter_get(&x->stats.requests);
        opened += counter_get(&x->stats.streams_opened);
        closed += counter_get(&x->streams.slow_closed);
        gapped += counter_get(&x->streams.slow_gapped);
        delivered_all += counter_get(&x->stats.delivered);
        uint32_t c = gauge_get(&x->stats.connections);
        conns += c;
        lua_createtable(L, 0, 2);
        set_int(L, "connections", c);
        set_int(L, "streams", gauge_get(&x->stats.streams));
        lua_rawseti(L, -2, (int)i + 1);
    }
    lua_setfield(L, -2, "workers");
    if (!w->proc)
        delivered_all = delivered;   /* counted by its own hub */
    set_int(L, "connections", (double)conns);
    set_int(L, "accepted", (double)accepted);
    set_int(L, "refused_busy", (double)refused);
    set_int(L, "requests", (double)requests);
    set_int(L, "streams_opened", (double)opened);
    set_int(L, "slow_closed", (double)closed);
    set_int(L, "slow_gapped", (double)gapped);
    set_int(L, "published", (double)published);
    set_int(L, "delivered", (double)delivered_all);
    set_int(L, "channels", (double)nch);
    set_int(L, "subscriptions", (double)nsubs);
    set_int(L, "history_events", (double)nev);
    set_int(L, "history_bytes", (double)hbytes);
    /* This worker's state: each worker has its own, capped on its own. */
    set_int(L, "lua_memory", (double)luavm_memory(vm));
    set_int(L, "worker", (double)w->id);
    /* Cluster mode: the connection to Redis as an operator watches it. */
    if (w->proc && w->proc->redis) {
        struct redis_bus_stats rs;
        redis_bus_stats(w->proc->redis, &rs);
        lua_createtable(L, 0, 15);
        set_int(L, "queued", (double)rs.queued);
        set_int(L, "in_flight", (double)rs.in_flight);
        set_int(L, "lost_in_flight", (double)rs.lost_in_flight);
        set_int(L, "gaps_filled", (double)rs.gaps_filled);
        set_int(L, "quiet_fills", (double)rs.quiet_fills);
        set_int(L, "history_lost", (double)rs.history_lost);
        set_int(L, "reconnects_publish", (double)rs.reconnects_publish);
        set_int(L, "reconnects_subscriber", (double)rs.reconnects_subscriber);
        set_int(L, "probe_failures", (double)rs.probe_failures);
        set_int(L, "command_timeouts", (double)rs.command_timeouts);
        set_int(L, "reachable", rs.reachable ? 1 : 0);
        set_int(L, "channels", (double)rs.channels);
        set_int(L, "control_sent", (double)rs.control_sent);
        set_int(L, "control_applied", (double)rs.control_applied);
        set_int(L, "control_failed", (double)rs.control_failed);
        lua_setfield(L, -2, "redis");
    }
    /* As a string: JSON encoders round big numbers. */
    char id[24];
    snprintf(id, sizeof id, "%" PRIu64, channels_last_id(w->channels));
    lua_pushstring(L, id);
    lua_setfield(L, -2, "last_id");
    return 1;
}
