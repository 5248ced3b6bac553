#include "lua_api.h"
#include "lua_api_internal.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua.h>

#include "access_log.h"
#include "channel.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "luavm.h"
#include "metrics.h"
#include "process.h"
#include "worker.h"

#define SLUICE_VERSION "0.1.0"

/* ---- misc ------------------------------------------------------------- */

/* core.drain(): asks the process for the graceful shutdown SIGTERM begins,
 * from the loop (not from inside the script call that asked: the request
 * being answered is queued first, and no connection is closed under a
 * running handler); the process then tells every worker to drain. */
static _Thread_local ev_timer drain_timer;

static void on_drain(struct ev_loop *loop, ev_timer *ev, int revents)
{
    (void)loop; (void)revents;
    worker_request_drain(ev->data);
}

static int l_drain(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    if (!ev_is_active(&drain_timer) && !vm->w->stopping) {
        ev_timer_init(&drain_timer, on_drain, 0, 0);
        drain_timer.data = vm->w;
        ev_timer_start(vm->w->loop, &drain_timer);
    }
    return 0;
}


static int l_log(lua_State *L)
{
    const char *level = luaL_checkstring(L, 1);
    const char *msg = luaL_checkstring(L, 2);
    enum log_level lv;
    if (log_parse_level(level, &lv) < 0)
        return luaL_error(L, "unknown log level %s", level);
    log_at(lv, "%s", msg);
    return 0;
}


/* core.listdir(dir) -> sorted names of regular files | nil, message */
static int l_listdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    if (!d) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    lua_newtable(L);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && (e->d_type == DT_REG || e->d_type == DT_LNK ||
                                    e->d_type == DT_UNKNOWN)) {
            lua_pushstring(L, e->d_name);
            lua_rawseti(L, -2, ++n);
        }
    if (closedir(d) < 0)
        log_warn("closedir %s: %s", path, strerror(errno));
    return 1;
}

/* core.set_hooks{dispatch=, timer=, closed=, transform=, reload=, published=} */
static int l_set_hooks(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    struct { const char *name; int *ref; } hooks[] = {
        { "dispatch", &vm->ref_dispatch }, { "timer", &vm->ref_timer },
        { "closed", &vm->ref_closed }, { "transform", &vm->ref_transform },
        { "reload", &vm->ref_reload }, { "published", &vm->ref_published },
    };
    for (size_t i = 0; i < sizeof hooks / sizeof hooks[0]; i++) {
        lua_getfield(L, 1, hooks[i].name);
        if (!lua_isfunction(L, -1))
            return luaL_error(L, "set_hooks: %s must be a function", hooks[i].name);
        luaL_unref(L, LUA_REGISTRYINDEX, *hooks[i].ref);
        *hooks[i].ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    return 0;
}

static int open_core(lua_State *L)
{
    static const luaL_Reg fns[] = {
        { "respond", l_respond }, { "open", l_open }, { "send", l_send },
        { "close", l_close }, { "alive", l_alive }, { "watch", l_watch },
        { "answer_later", l_answer_later },
        { "publish", l_publish }, { "subscribe", l_subscribe },
        { "subscribers", l_subscribers }, { "history", l_history },
        { "timer", l_timer }, { "timer_stop", l_timer_stop },
        { "timers_active", l_timers_active },
        { "now", l_now }, { "log", l_log }, { "stats", l_stats },
        { "set_hooks", l_set_hooks }, { "drain", l_drain },
        { "access_note", l_access_note }, { "quota_take", l_quota_take },
        { "shed", l_shed }, { "tag", l_tag }, { "disconnect", l_disconnect },
        { "admin_stats", l_admin_stats }, { NULL, NULL },
    };
    struct luavm *vm = lua_touserdata(L, lua_upvalueindex(1));
    lua_createtable(L, 0, 32);
    /* Without a worker (--check) only what loading scripts needs exists. */
    for (const luaL_Reg *f = fns; vm->w && f->name; f++) {
        lua_pushlightuserdata(L, vm);
        lua_pushcclosure(L, f->func, 1);
        lua_setfield(L, -2, f->name);
    }
    lua_pushcfunction(L, luavm_sandbox_run);
    lua_setfield(L, -2, "run");
    lua_pushcfunction(L, luavm_sandbox_resume);
    lua_setfield(L, -2, "resume");
    lua_pushcfunction(L, luavm_budget_spent);
    lua_setfield(L, -2, "budget_spent");
    lua_pushcfunction(L, l_listdir);
    lua_setfield(L, -2, "listdir");
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_log, 1);
    lua_setfield(L, -2, "log");
    lua_pushinteger(L, vm->cpu_budget_ms);
    lua_setfield(L, -2, "cpu_budget_ms");
    /* Which worker this state belongs to, and how many there are: app
     * timers start in worker 0 only, unless a script asks for every one. */
    lua_pushinteger(L, vm->w ? (lua_Integer)vm->w->id : 0);
    lua_setfield(L, -2, "worker_id");
    lua_pushinteger(L, vm->w && vm->w->proc ? (lua_Integer)vm->w->proc->nworkers : 1);
    lua_setfield(L, -2, "workers");
    lua_pushnumber(L, (lua_Number)vm->mem_limit);
    lua_setfield(L, -2, "memory_limit");
    lua_pushstring(L, SLUICE_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushboolean(L, access_log_enabled());
    lua_setfield(L, -2, "access_log");
    /* Whether new streams may be shed at all: no call per stream when not. */
    lua_pushboolean(L, vm->w && vm->w->cfg &&
                       (vm->w->cfg->max_streams || vm->w->cfg->shed_queued_bytes));
    lua_setfield(L, -2, "shed_enabled");
    /* Cluster mode: a publish may wait for the id Redis gives it. */
    lua_pushboolean(L, vm->w && vm->w->cfg && vm->w->cfg->redis_url);
    lua_setfield(L, -2, "cluster");
    return 1;
}

/* ---- calls from C into the runtime ------------------------------------ */

int lua_api_start(struct luavm *vm, const char *apps_dir, bool check_only)
{
    lua_State *L = vm->L;
    vm->ref_dispatch = vm->ref_timer = vm->ref_closed = LUA_NOREF;
    vm->ref_transform = vm->ref_reload = vm->ref_published = LUA_NOREF;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, open_core, 1);
    lua_setfield(L, -2, "sluice.core");
    lua_pop(L, 2);
    if (vm->w && vm->w->channels) {
        channels_set_framer(vm->w->channels, lua_api_frame_for_view, vm);
        channels_set_answer_fn(vm->w->channels, lua_api_published, vm);
    }

    lua_getglobal(L, "require");
    lua_pushstring(L, "sluice.runtime");
    if (!luavm_call(vm, 1, 1, "loading the runtime (is --lua-path right?)"))
        return -1;
    lua_getfield(L, -1, check_only ? "check" : "start");
    lua_remove(L, -2);
    lua_pushstring(L, apps_dir);
    if (!luavm_call(vm, 1, 1, "loading apps"))
        return -1;
    int problems = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    return problems;
}

static void push_request(lua_State *L, struct conn *c)
{
    const struct http_request *r = &c->parser->req;
    lua_pushstring(L, http_method(c->parser));
    /* The target: origin-form "/path?query", or absolute-form. */
    const char *url = r->head;
    size_t ulen = r->url_len;
    if (ulen > 7 && (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0)) {
        /* Skip scheme and authority: the path starts at the first '/' or
         * '?' after "//" ("http://host?x=1" has the path "/"). */
        size_t skip = (url[4] == ':') ? 7 : 8;
        while (skip < ulen && url[skip] != '/' && url[skip] != '?')
            skip++;
        url += skip;
        ulen -= skip;
    }
    const char *q = memchr(url, '?', ulen);
    size_t plen = q ? (size_t)(q - url) : ulen;
    if (plen)
        lua_pushlstring(L, url, plen);
    else
        lua_pushliteral(L, "/");
    if (q)
        lua_pushlstring(L, q + 1, ulen - plen - 1);
    else
        lua_pushliteral(L, "");
    lua_createtable(L, 0, (int)r->nheaders);
    for (uint32_t i = 0; i < r->nheaders; i++) {
        const struct http_header *h = &r->headers[i];
        lua_pushlstring(L, r->head + h->name_off, h->name_len);
        lua_pushvalue(L, -1);
        lua_rawget(L, -3);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushlstring(L, r->head + h->value_off, h->value_len);
        } else {   /* repeated header: join as RFC 9110 allows */
            bool cookie = h->name_len == 6 && memcmp(r->head + h->name_off, "cookie", 6) == 0;
            lua_pushstring(L, cookie ? "; " : ", ");
            lua_pushlstring(L, r->head + h->value_off, h->value_len);
            lua_concat(L, 3);
        }
        lua_rawset(L, -3);
    }
    lua_pushlstring(L, r->body ? r->body : "", r->body_len);
    char peer[64];
    conn_peer_text(c, peer, sizeof peer);
    lua_pushstring(L, peer);
}

/* The request id, sluice's traceparent, and the caller's span id (nil
 * when no valid traceparent came). */
static void push_ids(lua_State *L, const struct access_rec *r)
{
    if (!r) {
        lua_pushnil(L);
        lua_pushnil(L);
        lua_pushnil(L);
        return;
    }
    char tp[REQID_TRACEPARENT_LEN], parent[16];
    lua_pushlstring(L, r->ids.id, r->ids.id_len);
    reqid_traceparent(&r->ids, tp);
    lua_pushlstring(L, tp, sizeof tp);
    if (r->ids.has_parent) {
        reqid_hex(r->ids.parent, 8, parent);
        lua_pushlstring(L, parent, sizeof parent);
    } else {
        lua_pushnil(L);
    }
}

void lua_api_dispatch(struct luavm *vm, struct conn *c)
{
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_dispatch);
    lua_pushnumber(L, worker_handle(vm->w, c));
    push_request(L, c);
    push_ids(L, c->rec);
    luavm_call(vm, 10, 0, "dispatch");
}

void lua_api_stream_closed(struct luavm *vm, struct conn *c)
{
    lua_State *L = vm->L;
    c->lua_watch = false;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_closed);
    lua_pushnumber(L, worker_handle(vm->w, c));
    luavm_call(vm, 1, 0, "stream close");
}

void lua_api_reload(struct luavm *vm)
{
    lua_rawgeti(vm->L, LUA_REGISTRYINDEX, vm->ref_reload);
    /* runtime.reload returns its problems: counted (once, in worker 0). */
    if (luavm_call(vm, 0, 1, "reload")) {
        metrics_reload(vm->w->id, (int)lua_tointeger(vm->L, -1));
        lua_pop(vm->L, 1);
    } else {
        metrics_reload(vm->w->id, 1);
    }
    channels_views_changed(vm->w->channels);   /* a view's transform may be new */
}