/* What the parts of sluice.core share: lua_api.c registers the module and
 * calls into the runtime; lua_api_conn.c (requests and streams),
 * lua_api_channels.c (publish, subscribe, views), lua_api_timers.c (clock
 * and timers) and lua_api_stats.c (counters) hold the functions. Every
 * function gets the luavm as its first upvalue. */
#ifndef SLUICE_LUA_API_INTERNAL_H
#define SLUICE_LUA_API_INTERNAL_H

#include <stddef.h>

#include <lauxlib.h>
#include <lua.h>

#include "luavm.h"
#include "worker.h"

struct conn;
struct event_src;
struct frame;

static inline struct luavm *vm_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

static inline struct conn *conn_arg(lua_State *L, int idx)
{
    return worker_conn(vm_of(L)->w, luaL_checknumber(L, idx));
}

/* An optional string argument: NULL for nil or absent. */
static inline const char *opt_lstring(lua_State *L, int idx, size_t *len)
{
    *len = 0;
    return lua_isnoneornil(L, idx) ? NULL : luaL_checklstring(L, idx, len);
}

/* lua_api_conn.c */
int l_respond(lua_State *L);
int l_open(lua_State *L);
int l_send(lua_State *L);
int l_close(lua_State *L);
int l_alive(lua_State *L);
int l_watch(lua_State *L);
int l_answer_later(lua_State *L);

/* lua_api_channels.c */
int l_publish(lua_State *L);
int l_subscribe(lua_State *L);
int l_subscribers(lua_State *L);
int l_history(lua_State *L);
/* A view_framer (channel.h); ctx is the luavm. */
struct frame *lua_api_frame_for_view(void *ctx, int view, const struct event_src *src);
struct bus_answer;
void lua_api_published(void *ctx, const struct bus_answer *a);

/* lua_api_timers.c (the test kit's core has its own, on a clock the test
 * moves, with the same bounds) */
#define MAX_TIMER_S 31536000
#define MIN_TIMER_REPEAT_S 0.001
int l_timer(lua_State *L);
int l_timer_stop(lua_State *L);
int l_timers_active(lua_State *L);
int l_now(lua_State *L);

/* lua_api_access.c */
int l_access_note(lua_State *L);

/* lua_api_admin.c */
int l_quota_take(lua_State *L);
int l_shed(lua_State *L);
int l_tag(lua_State *L);
int l_disconnect(lua_State *L);
int l_admin_stats(lua_State *L);

/* lua_api_stats.c */
int l_stats(lua_State *L);

#endif
