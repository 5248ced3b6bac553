/* sluice_testcore: the Lua C module behind sluice.testing's in-process
 * mode (testing.app). It is the server's own code, every file of core/ but
 * main.c and the loop-driven timers, driven by hand instead of by an
 * event loop and a listener:
 *
 * - A client connection is a real struct conn (conn.c) whose descriptor
 *   is a memfd, not a socket: the test writes a request into the file
 *   where the server reads next, feeds the connection a read event, and
 *   the real conn.c parses it (http.c, llhttp), dispatches it into the
 *   real runtime (lua_api*.c, runtime.lua), and writes its answer or its
 *   stream (stream.c, channel.c, outbuf.c) into the same file, where the
 *   test reads it back. A client that hangs up is a read event at the end
 *   of the file (EOF), as for a socket.
 * - The flush pass that worker.c runs before the loop sleeps runs at the
 *   end of every call here, so a call is one loop turn.
 * - Script timers and core.now run on a clock the test moves
 *   (app:advance), in due order; the same clock is os.time in the app's
 *   Lua state, and the channels' history clock.
 *
 * One app lives at a time per thread: luavm.c keeps the running state in
 * a thread-local (the CPU budget's signal handler needs it). */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "buf.h"
#include "channel.h"
#include "config.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "lua_api.h"
#include "lua_api_internal.h"
#include "luavm.h"
#include "dispatch.h"
#include "worker.h"

#define APP_MT "sluice.testcore.app"
#define MAX_FIRINGS 100000      /* timer calls one advance() may make */
#define MAX_PASSES 10000        /* flush passes one call may take */
#define MAX_COPY_DEPTH 32

/* What the test holds of a connection: its end of the wire. */
struct client {
    int fd;                /* a dup of the server's memfd */
    double handle;         /* the server's conn, while it lives */
    off_t rpos;            /* next byte of the file to read */
    off_t *skip;           /* [start, end) pairs the test itself wrote */
    size_t nskip;
    bool hung_up;
};

struct vtimer {
    struct vtimer *next;
    double at, repeat;
    int id;
};

struct app {
    struct worker w;
    struct config cfg;
    char *apps_dir, *lua_dir;
    double now;            /* the clock the test moves (epoch seconds) */
    struct vtimer *timers; /* by due time */
    unsigned next_timer_id;
    struct client *clients;
    size_t nclients, cap_clients;
    int log_fd;            /* stderr while app code runs */
    int saved_stderr;
    int depth;
    bool closed;
};

static _Thread_local struct app *live;   /* the one app of this thread */

static struct app *app_of_worker(struct worker *w)
{
    return (struct app *)((char *)w - offsetof(struct app, w));
}

static double app_clock(void)
{
    return live ? live->now : 0;
}

/* ---- the clock and timers (what lua_api_timers.c is on the server) ---- */

static void timer_insert(struct app *a, struct vtimer *t)
{
    struct vtimer **p = &a->timers;
    while (*p && (*p)->at <= t->at)   /* due at the same time: in start order */
        p = &(*p)->next;
    t->next = *p;
    *p = t;
}

/* core.timer(after_s, repeat_s) -> id */
int l_timer(lua_State *L)
{
    struct app *a = app_of_worker(vm_of(L)->w);
    lua_Number after = luaL_checknumber(L, 1);
    lua_Number repeat = luaL_optnumber(L, 2, 0);
    /* The server's checks (lua_api_timers.c), in the same words. */
    if (!(after >= 0 && after <= MAX_TIMER_S) || !(repeat >= 0 && repeat <= MAX_TIMER_S))
        return luaL_error(L, "timer intervals must be numbers from 0 to %d seconds", MAX_TIMER_S);
    if (repeat > 0 && repeat < MIN_TIMER_REPEAT_S)
        repeat = MIN_TIMER_REPEAT_S;
    struct vtimer *t = calloc(1, sizeof *t);
    if (!t)
        return luaL_error(L, "out of memory");
    t->id = (int)(++a->next_timer_id & 0x7fffffffu);
    t->at = a->now + after;
    t->repeat = repeat;
    timer_insert(a, t);
    lua_pushinteger(L, t->id);
    return 1;
}

int l_timer_stop(lua_State *L)
{
    struct app *a = app_of_worker(vm_of(L)->w);
    int id = (int)luaL_checkinteger(L, 1);
    for (struct vtimer **p = &a->timers; *p; p = &(*p)->next) {
        if ((*p)->id == id) {
            struct vtimer *t = *p;
            *p = t->next;
            free(t);
            break;
        }
    }
    return 0;
}

/* core.timers_active(): one process and no cluster lease, so always. */
int l_timers_active(lua_State *L)
{
    lua_pushboolean(L, 1);
    return 1;
}

int l_now(lua_State *L)
{
    lua_pushnumber(L, app_of_worker(vm_of(L)->w)->now);
    return 1;
}

void lua_api_stop_timers(struct luavm *vm)
{
    struct app *a = app_of_worker(vm->w);
    while (a->timers) {
        struct vtimer *t = a->timers;
        a->timers = t->next;
        free(t);
    }
}

/* ---- one loop turn ------------------------------------------------------ */

/* What worker.c's flusher does before the loop sleeps, and the events
 * the connections fed themselves meanwhile, until nothing is left. */
static void settle(struct app *a)
{
    for (int pass = 0; pass < MAX_PASSES; pass++) {
        struct conn *c;
        while ((c = TAILQ_FIRST(&a->w.flush_queue))) {
            TAILQ_REMOVE(&a->w.flush_queue, c, flush_link);
            conn_on_flush(c);
        }
        if (ev_pending_count(a->w.loop) == 0)
            return;
        ev_invoke_pending(a->w.loop);
    }
    log_error("sluice.testing: output still pending after %d passes", MAX_PASSES);
}

/* worker_stop feeds the flusher: here that is the same pass. */
/* conn.c starts worker.c's idle watcher so the loop turns again; this
 * loop never runs, calls here are the turns. */
static void on_flush_pending(struct ev_loop *loop, ev_idle *idle, int revents)
{
    (void)loop;
    (void)idle;
    (void)revents;
}

static void on_flusher(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)loop; (void)p; (void)revents;
}

/* App code's log lines (stderr) go to the app's log while it runs. */
static void enter(lua_State *L, struct app *a)
{
    if (a->closed)
        luaL_error(L, "sluice.testing: this app was closed");
    if (live != a)
        luaL_error(L, "sluice.testing: another app was started since; only one runs at a time");
    if (a->depth++ > 0)
        return;
    fflush(stderr);
    a->saved_stderr = dup(STDERR_FILENO);
    if (a->saved_stderr >= 0 && dup2(a->log_fd, STDERR_FILENO) < 0) {
        close(a->saved_stderr);
        a->saved_stderr = -1;
    }
}

static void leave(struct app *a)
{
    settle(a);
    if (--a->depth > 0)
        return;
    fflush(stderr);
    if (a->saved_stderr >= 0) {
        if (dup2(a->saved_stderr, STDERR_FILENO) < 0)
            perror("sluice.testing: restoring stderr");
        close(a->saved_stderr);
        a->saved_stderr = -1;
    }
}

/* ---- values between the test's Lua state and the app's ------------------- */

static bool copy_value(lua_State *from, int idx, lua_State *to, int depth, char *err, size_t errlen)
{
    idx = idx < 0 ? lua_gettop(from) + idx + 1 : idx;
    switch (lua_type(from, idx)) {
    case LUA_TNIL:
    case LUA_TNONE:
        lua_pushnil(to);
        return true;
    case LUA_TBOOLEAN:
        lua_pushboolean(to, lua_toboolean(from, idx));
        return true;
    case LUA_TNUMBER:
        lua_pushnumber(to, lua_tonumber(from, idx));
        return true;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(from, idx, &n);
        lua_pushlstring(to, s, n);
        return true;
    }
    case LUA_TTABLE:
        if (depth >= MAX_COPY_DEPTH) {
            snprintf(err, errlen, "table nested deeper than %d", MAX_COPY_DEPTH);
            return false;
        }
        lua_newtable(to);
        lua_pushnil(from);
        while (lua_next(from, idx)) {
            if (!copy_value(from, -2, to, depth + 1, err, errlen) ||
                !copy_value(from, -1, to, depth + 1, err, errlen)) {
                lua_pop(from, 2);
                lua_pop(to, lua_gettop(to) > 0 ? 1 : 0);
                return false;
            }
            lua_rawset(to, -3);
            lua_pop(from, 1);
        }
        return true;
    default:
        snprintf(err, errlen, "cannot pass a %s between the test and the app",
                 lua_typename(from, lua_type(from, idx)));
        return false;
    }
}

/* Runs code in the app's state with args; its results come back. Errors
 * come back as nil, message. */
static int run_in_app(lua_State *L, struct app *a, const char *code, size_t len,
                      int first_arg, int nargs, const char *what)
{
    lua_State *A = a->w.vm->L;
    int base = lua_gettop(A);
    if (luaL_loadbuffer(A, code, len, what) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, lua_tostring(A, -1));
        lua_settop(A, base);
        return 2;
    }
    char err[160];
    for (int i = 0; i < nargs; i++) {
        if (!copy_value(L, first_arg + i, A, 0, err, sizeof err)) {
            lua_settop(A, base);
            return luaL_error(L, "%s", err);
        }
    }
    /* With a traceback, as the server runs its runtime (luavm_call logs
     * the error; the message is also returned). */
    int rc = lua_pcall(A, nargs, LUA_MULTRET, 0);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, lua_tostring(A, -1) ? lua_tostring(A, -1) : "(error object is not a string)");
        lua_settop(A, base);
        return 2;
    }
    int nres = lua_gettop(A) - base;
    luaL_checkstack(L, nres + 2, "results");
    for (int i = 1; i <= nres; i++) {
        if (!copy_value(A, base + i, L, 0, err, sizeof err)) {
            lua_settop(A, base);
            return luaL_error(L, "%s", err);
        }
    }
    lua_settop(A, base);
    return nres;
}

/* ---- creating and closing an app ----------------------------------------- */

static struct app *check_app(lua_State *L)
{
    struct app **p = luaL_checkudata(L, 1, APP_MT);
    if (!*p)
        luaL_error(L, "sluice.testing: this app was closed");
    return *p;
}

static double opt_num(lua_State *L, int t, const char *k, double dflt)
{
    lua_getfield(L, t, k);
    double v = lua_isnil(L, -1) ? dflt : luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static double wall_now(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
}

/* The app's os.time and os.getenv: the clock the test moves, and the
 * environment the test gave (else the process's). */
static const char prelude[] =
    "local env, clock = ...\n"
    "local getenv, time, floor = os.getenv, os.time, math.floor\n"
    "os.getenv = function(name)\n"
    "  local v = env[name]\n"
    "  if v ~= nil then return v end\n"
    "  return getenv(name)\n"
    "end\n"
    "os.time = function(t)\n"
    "  if t ~= nil then return time(t) end\n"
    "  return floor(clock())\n"
    "end\n";

static int tc_app_clock(lua_State *L)
{
    struct app *a = lua_touserdata(L, lua_upvalueindex(1));
    lua_pushnumber(L, a->now);
    return 1;
}

static void close_conns(struct app *a)
{
    for (uint32_t i = 0; i < a->w.nslots; i++)
        if (a->w.slots[i])
            conn_free(a->w.slots[i]);
}

static void free_app(struct app *a)
{
    if (a->w.vm) {
        close_conns(a);
        lua_api_stop_timers(a->w.vm);
        luavm_free(a->w.vm);
    }
    if (a->w.channels)
        channels_free(a->w.channels);
    if (a->w.loop) {
        deadline_list_stop(&a->w.header_timeouts);
        deadline_list_stop(&a->w.keepalive_timeouts);
        deadline_list_stop(&a->w.send_timeouts);
        ev_idle_stop(a->w.loop, &a->w.flush_pending);
        ev_loop_destroy(a->w.loop);
    }
    for (size_t i = 0; i < a->nclients; i++) {
        if (a->clients[i].fd >= 0)
            close(a->clients[i].fd);
        free(a->clients[i].skip);
    }
    free(a->clients);
    free(a->w.slots);
    free(a->w.slot_gen);
    free(a->w.free_slots);
    if (a->log_fd >= 0)
        close(a->log_fd);
    free(a->apps_dir);
    free(a->lua_dir);
    if (live == a)
        live = NULL;
    free(a);
}

static void on_expired(struct deadline *d, void *ctx)
{
    (void)d; (void)ctx;   /* the loop never runs: deadlines never expire */
}

/* new{ apps_dir=, lua_dir=, env={...}, options={...} } -> app | nil, err */
static int tc_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (live)
        return luaL_error(L, "sluice.testing: close the other app first (app:close())");
    lua_getfield(L, 1, "apps_dir");
    const char *apps = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "lua_dir");
    const char *lua_dir = luaL_checkstring(L, -1);
    struct app *a = calloc(1, sizeof *a);
    if (!a)
        return luaL_error(L, "out of memory");
    a->log_fd = a->saved_stderr = -1;
    a->apps_dir = strdup(apps);
    a->lua_dir = strdup(lua_dir);
    lua_pop(L, 2);
    a->log_fd = memfd_create("sluice-testing-log", MFD_CLOEXEC);
    if (!a->apps_dir || !a->lua_dir || a->log_fd < 0) {
        free_app(a);
        return luaL_error(L, "sluice.testing: cannot set up an app: %s", strerror(errno));
    }
    config_defaults(&a->cfg);
    a->cfg.apps_dir = a->apps_dir;
    a->cfg.lua_dir = a->lua_dir;
    a->cfg.watch = false;
    lua_getfield(L, 1, "options");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        a->cfg.heartbeat = opt_num(L, t, "heartbeat", a->cfg.heartbeat);
        a->cfg.retry_ms = (long)opt_num(L, t, "retry", (double)a->cfg.retry_ms);
        a->cfg.history_len = (size_t)opt_num(L, t, "history_len", (double)a->cfg.history_len);
        a->cfg.history_ttl = opt_num(L, t, "history_ttl", a->cfg.history_ttl);
        a->cfg.history_bytes = (size_t)opt_num(L, t, "max_history_bytes", (double)a->cfg.history_bytes);
        a->cfg.max_queued = (size_t)opt_num(L, t, "max_queued_bytes", (double)a->cfg.max_queued);
        a->cfg.max_body = (size_t)opt_num(L, t, "max_body_bytes", (double)a->cfg.max_body);
        a->cfg.max_head = (size_t)opt_num(L, t, "max_header_bytes", (double)a->cfg.max_head);
        a->cfg.max_headers = (size_t)opt_num(L, t, "max_headers", (double)a->cfg.max_headers);
        a->cfg.lua_cpu_ms = (int)opt_num(L, t, "lua_cpu_budget", a->cfg.lua_cpu_ms);
        a->cfg.lua_mem = (size_t)opt_num(L, t, "lua_memory", (double)a->cfg.lua_mem);
    }
    lua_pop(L, 1);
    a->now = opt_num(L, 1, "clock", wall_now());

    /* worker_init without the listener, the reloader and the signals. */
    struct worker *w = &a->w;
    const struct config *cfg = &a->cfg;
    w->cfg = cfg;
    w->listen_fd = w->spare_fd = -1;
    w->limits = (struct http_limits){ cfg->max_head, cfg->max_headers, cfg->max_body };
    w->loop = ev_loop_new(EVFLAG_AUTO);
    if (!w->loop) {
        free_app(a);
        return luaL_error(L, "sluice.testing: cannot create an event loop");
    }
    TAILQ_INIT(&w->flush_queue);
    ev_prepare_init(&w->flusher, on_flusher);
    ev_idle_init(&w->flush_pending, on_flush_pending);
    deadline_list_init(&w->header_timeouts, w->loop, cfg->header_timeout, on_expired, w);
    deadline_list_init(&w->keepalive_timeouts, w->loop, cfg->keepalive_timeout, on_expired, w);
    deadline_list_init(&w->send_timeouts, w->loop, cfg->send_timeout, on_expired, w);
    w->streams = (struct stream_env){ .loop = w->loop, .max_queued = cfg->max_queued,
                                      .describe_subs = channels_describe_stream };
    w->channels = channels_new(w->loop, cfg->history_len, cfg->history_ttl, cfg->history_bytes);
    w->handler = &worker_handler;
    if (!w->channels) {
        free_app(a);
        return luaL_error(L, "out of memory");
    }
    channels_set_clock(w->channels, app_clock);
    live = a;
    w->vm = luavm_new(w, cfg->lua_dir, cfg->lua_mem, cfg->lua_cpu_ms);
    if (!w->vm) {
        free_app(a);
        return luaL_error(L, "out of memory");
    }

    struct app **ud = lua_newuserdata(L, sizeof *ud);
    *ud = a;
    luaL_getmetatable(L, APP_MT);
    lua_setmetatable(L, -2);
    int ud_idx = lua_gettop(L);

    enter(L, a);
    lua_State *A = w->vm->L;
    char err[160];
    bool ok = luaL_loadbuffer(A, prelude, sizeof prelude - 1, "=sluice.testing") == 0;
    if (ok) {
        lua_getfield(L, 1, "env");
        if (lua_isnil(L, -1)) {
            lua_newtable(A);
        } else if (!copy_value(L, -1, A, 0, err, sizeof err)) {
            lua_pop(L, 1);
            leave(a);
            return luaL_error(L, "env: %s", err);
        }
        lua_pop(L, 1);
        lua_pushlightuserdata(A, a);
        lua_pushcclosure(A, tc_app_clock, 1);
        ok = luavm_call(w->vm, 2, 0, "sluice.testing prelude");
    }
    int problems = ok ? lua_api_start(w->vm, cfg->apps_dir, false) : -1;
    leave(a);
    lua_pushvalue(L, ud_idx);
    lua_pushinteger(L, problems);
    return 2;
}

static int tc_close(lua_State *L)
{
    struct app **p = luaL_checkudata(L, 1, APP_MT);
    struct app *a = *p;
    if (!a)
        return 0;
    if (live == a) {
        /* Its connections close as on the server's exit, their closed
         * hooks logging into its log. */
        enter(L, a);
        close_conns(a);
        leave(a);
    }
    *p = NULL;
    free_app(a);
    return 0;
}

/* ---- the wire -------------------------------------------------------------- */

static struct client *client_arg(lua_State *L, struct app *a, int idx)
{
    lua_Integer i = luaL_checkinteger(L, idx);
    if (i < 1 || (size_t)i > a->nclients)
        luaL_error(L, "sluice.testing: no connection %d", (int)i);
    return &a->clients[i - 1];
}

/* app:connect() -> connection number: a client the server accepted. */
static int tc_connect(lua_State *L)
{
    struct app *a = check_app(L);
    if (a->nclients == a->cap_clients) {
        size_t n = a->cap_clients ? a->cap_clients * 2 : 16;
        struct client *c = realloc(a->clients, n * sizeof *c);
        if (!c)
            return luaL_error(L, "out of memory");
        a->clients = c;
        a->cap_clients = n;
    }
    int fd = memfd_create("sluice-testing-conn", MFD_CLOEXEC);
    int mine = fd >= 0 ? dup(fd) : -1;
    if (fd < 0 || mine < 0) {
        if (fd >= 0)
            close(fd);
        return luaL_error(L, "sluice.testing: memfd: %s", strerror(errno));
    }
    struct client *cl = &a->clients[a->nclients++];
    *cl = (struct client){ .fd = mine, .handle = -1 };
    enter(L, a);
    struct sockaddr_in peer = { .sin_family = AF_INET,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    a->w.stats.accepted++;
    uint32_t before = a->w.nconns;
    conn_accept(&a->w, fd, (struct sockaddr *)&peer);
    if (a->w.nconns > before) {
        /* The newest slot is the one free_slots handed out last. */
        struct conn *c = a->w.slots[a->w.free_slots[a->w.nfree]];
        cl->handle = worker_handle(&a->w, c);
    }
    leave(a);
    lua_pushinteger(L, (lua_Integer)a->nclients);
    return 1;
}

static struct conn *server_side(struct app *a, struct client *cl)
{
    return cl->handle < 0 ? NULL : worker_conn(&a->w, cl->handle);
}

/* The server reads what the client sent: a read event, as from epoll. */
static void readable(struct app *a, struct conn *c)
{
    ev_feed_event(a->w.loop, &c->io, EV_READ);
    ev_invoke_pending(a->w.loop);
}

/* app:send(conn, bytes): the client writes; the server reads all of it. */
static int tc_send(lua_State *L)
{
    struct app *a = check_app(L);
    struct client *cl = client_arg(L, a, 2);
    size_t len;
    const char *bytes = luaL_checklstring(L, 3, &len);
    if (cl->hung_up)
        return luaL_error(L, "sluice.testing: this connection was closed");
    enter(L, a);
    /* A read's worth at a time, each written where the server reads
     * next and read before the next one: the server's answer is written
     * after what it read, never over bytes it has yet to read. */
    size_t chunk_max = sizeof a->w.readbuf;
    for (size_t done = 0; done < len;) {
        struct conn *c = server_side(a, cl);
        if (!c)
            break;   /* closed: the rest is lost, as on a reset */
        size_t n = len - done < chunk_max ? len - done : chunk_max;
        off_t at = lseek(cl->fd, 0, SEEK_CUR);
        off_t *skip = realloc(cl->skip, (cl->nskip + 2) * sizeof *skip);
        if (skip)
            cl->skip = skip;
        if (at < 0 || !skip || pwrite(cl->fd, bytes + done, n, at) != (ssize_t)n) {
            leave(a);
            return luaL_error(L, "sluice.testing: writing the request: %s", strerror(errno));
        }
        cl->skip[cl->nskip++] = at;
        cl->skip[cl->nskip++] = at + (off_t)n;
        done += n;
        /* Until it has read the chunk (it pauses while answers queue). */
        for (int i = 0; i < 100 && (c = server_side(a, cl)); i++) {
            off_t pos = lseek(cl->fd, 0, SEEK_CUR);
            if (pos < 0 || pos >= at + (off_t)n)
                break;
            readable(a, c);
            settle(a);
        }
    }
    leave(a);
    return 0;
}

/* app:recv(conn) -> bytes written to the client since, server_closed */
static int tc_recv(lua_State *L)
{
    struct app *a = check_app(L);
    struct client *cl = client_arg(L, a, 2);
    struct stat st;
    if (cl->fd < 0 || fstat(cl->fd, &st) < 0) {
        lua_pushliteral(L, "");
        lua_pushboolean(L, 1);
        return 2;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    while (cl->rpos < st.st_size) {
        off_t end = st.st_size;
        bool skipped = false;
        for (size_t i = 0; i < cl->nskip; i += 2) {
            if (cl->rpos >= cl->skip[i] && cl->rpos < cl->skip[i + 1]) {
                cl->rpos = cl->skip[i + 1];
                skipped = true;
                break;
            }
            if (cl->skip[i] > cl->rpos && cl->skip[i] < end)
                end = cl->skip[i];
        }
        if (skipped)
            continue;
        char *dst = luaL_prepbuffer(&b);
        size_t want = (size_t)(end - cl->rpos);
        if (want > LUAL_BUFFERSIZE)
            want = LUAL_BUFFERSIZE;
        ssize_t n = pread(cl->fd, dst, want, cl->rpos);
        if (n <= 0)
            break;
        luaL_addsize(&b, (size_t)n);
        cl->rpos += n;
    }
    luaL_pushresult(&b);
    lua_pushboolean(L, cl->hung_up || server_side(a, cl) == NULL);
    return 2;
}

/* app:hangup(conn): the client closes its end (EOF for the server). */
static int tc_hangup(lua_State *L)
{
    struct app *a = check_app(L);
    struct client *cl = client_arg(L, a, 2);
    if (cl->hung_up)
        return 0;
    cl->hung_up = true;
    enter(L, a);
    struct conn *c = server_side(a, cl);
    if (c) {
        /* Everything it sent is read: the next read is the end. */
        struct stat st;
        if (fstat(cl->fd, &st) == 0 && lseek(cl->fd, st.st_size, SEEK_SET) >= 0)
            readable(a, c);
    }
    leave(a);
    return 0;
}

/* app:conn_state(conn) -> "reading" | "streaming" | ... | "closed" */
static int tc_conn_state(lua_State *L)
{
    struct app *a = check_app(L);
    struct client *cl = client_arg(L, a, 2);
    static const char *const names[] = { "reading", "dispatching", "streaming", "closing", "dead" };
    struct conn *c = server_side(a, cl);
    lua_pushstring(L, c ? names[c->state] : "closed");
    if (c)
        lua_pushnumber(L, cl->handle);
    else
        lua_pushnil(L);
    return 2;
}

/* ---- time -------------------------------------------------------------- */

/* app:advance(seconds) -> timers fired: runs every timer due, in order,
 * each at its own time, then sets the clock to now + seconds. */
static int tc_advance(lua_State *L)
{
    struct app *a = check_app(L);
    double by = luaL_checknumber(L, 2);
    if (!(by >= 0 && by <= 31536000))
        return luaL_error(L, "advance: seconds must be from 0 to 31536000");
    enter(L, a);
    double until = a->now + by;
    int fired = 0;
    while (a->timers && a->timers->at <= until) {
        if (++fired > MAX_FIRINGS) {
            leave(a);
            return luaL_error(L, "advance: more than %d timer calls (a timer repeating too "
                              "often for this step?)", MAX_FIRINGS);
        }
        struct vtimer *t = a->timers;
        a->timers = t->next;
        if (t->at > a->now)
            a->now = t->at;
        int id = t->id;
        if (t->repeat > 0) {   /* re-armed before the call, as libev does */
            t->at += t->repeat;
            timer_insert(a, t);
        } else {
            free(t);
        }
        struct luavm *vm = a->w.vm;
        lua_rawgeti(vm->L, LUA_REGISTRYINDEX, vm->ref_timer);
        lua_pushinteger(vm->L, id);
        luavm_call(vm, 1, 0, "timer");
        settle(a);
    }
    a->now = until;
    leave(a);
    lua_pushinteger(L, fired);
    return 1;
}

static int tc_now(lua_State *L)
{
    lua_pushnumber(L, check_app(L)->now);
    return 1;
}

/* app:next_timer() -> seconds until the next timer is due, or nil */
static int tc_next_timer(lua_State *L)
{
    struct app *a = check_app(L);
    if (!a->timers)
        return 0;
    lua_pushnumber(L, a->timers->at - a->now);
    return 1;
}

/* ---- the app's Lua state ------------------------------------------------------ */

/* app:eval(code, ...) -> results | nil, message: runs code in the app's
 * state (as trusted runtime code, like the server's calls into it). */
static int tc_eval(lua_State *L)
{
    struct app *a = check_app(L);
    size_t len;
    const char *code = luaL_checklstring(L, 2, &len);
    int top = lua_gettop(L);
    enter(L, a);
    int n = run_in_app(L, a, code, len, 3, top - 2, "=sluice.testing");
    leave(a);
    return n;
}

static int tc_reload(lua_State *L)
{
    struct app *a = check_app(L);
    enter(L, a);
    lua_api_reload(a->w.vm);
    leave(a);
    return 0;
}

/* app:log() -> what the app logged so far */
static int tc_log(lua_State *L)
{
    struct app *a = check_app(L);
    fflush(stderr);
    struct stat st;
    if (fstat(a->log_fd, &st) < 0)
        return luaL_error(L, "fstat: %s", strerror(errno));
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    off_t pos = 0;
    while (pos < st.st_size) {
        char *dst = luaL_prepbuffer(&b);
        ssize_t n = pread(a->log_fd, dst, LUAL_BUFFERSIZE, pos);
        if (n <= 0)
            break;
        luaL_addsize(&b, (size_t)n);
        pos += n;
    }
    luaL_pushresult(&b);
    return 1;
}

static int tc_gc(lua_State *L)
{
    struct app **p = luaL_checkudata(L, 1, APP_MT);
    if (*p) {
        free_app(*p);
        *p = NULL;
    }
    return 0;
}

int luaopen_sluice_testcore(lua_State *L);

int luaopen_sluice_testcore(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "connect", tc_connect }, { "send", tc_send }, { "recv", tc_recv },
        { "hangup", tc_hangup }, { "conn_state", tc_conn_state },
        { "advance", tc_advance }, { "now", tc_now }, { "next_timer", tc_next_timer },
        { "eval", tc_eval }, { "reload", tc_reload }, { "log", tc_log },
        { "close", tc_close }, { NULL, NULL },
    };
    luaL_newmetatable(L, APP_MT);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, tc_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushcfunction(L, tc_new);
    lua_setfield(L, -2, "new");
    return 1;
}
