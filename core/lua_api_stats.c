/* sluice.core, counters: core.stats() for sluice.stats() and the
 * metrics endpoint. */
#include "lua_api_internal.h"

#include <inttypes.h>
#include <stdio.h>

#include "channel.h"
#include "luavm.h"
#include "worker.h"

static void set_int(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

int l_stats(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    struct worker *w = vm->w;
    size_t nch, nsubs, nev, hbytes;
    uint64_t published, delivered;
    channels_counts(w->channels, &nch, &nsubs, &nev, &hbytes);
    channels_traffic(w->channels, &published, &delivered);
    lua_createtable(L, 0, 16);
    set_int(L, "connections", w->nconns);
    set_int(L, "accepted", (double)w->stats.accepted);
    set_int(L, "refused_busy", (double)w->stats.refused_busy);
    set_int(L, "requests", (double)w->stats.requests);
    set_int(L, "streams_opened", (double)w->stats.streams_opened);
    set_int(L, "slow_closed", (double)w->streams.slow_closed);
    set_int(L, "slow_gapped", (double)w->streams.slow_gapped);
    set_int(L, "published", (double)published);
    set_int(L, "delivered", (double)delivered);
    set_int(L, "channels", (double)nch);
    set_int(L, "subscriptions", (double)nsubs);
    set_int(L, "history_events", (double)nev);
    set_int(L, "history_bytes", (double)hbytes);
    set_int(L, "lua_memory", (double)luavm_memory(vm));
    /* As a string: JSON encoders round big numbers. */
    char id[24];
    snprintf(id, sizeof id, "%" PRIu64, channels_last_id(w->channels));
    lua_pushstring(L, id);
    lua_setfield(L, -2, "last_id");
    return 1;
}
