#include "lua_api.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>
#include <lua.h>

#include "buf.h"
#include "channel.h"
#include "conn.h"
#include "frame.h"
#include "http.h"
#include "log.h"
#include "luavm.h"
#include "numfmt.h"
#include "sse.h"
#include "worker.h"

#define SLUICE_VERSION "0.1.0"
#define MAX_RETRY_MS 86400000
#define MIN_HEARTBEAT 0.1
#define MAX_TIMER_S 31536000
#define MIN_TIMER_REPEAT_S 0.001

static struct luavm *vm_of(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

static struct conn *conn_arg(lua_State *L, int idx)
{
    return worker_conn(vm_of(L)->w, luaL_checknumber(L, idx));
}

/* An optional string argument: NULL for nil or absent. */
static const char *opt_lstring(lua_State *L, int idx, size_t *len)
{
    *len = 0;
    return lua_isnoneornil(L, idx) ? NULL : luaL_checklstring(L, idx, len);
}

/* ---- response heads --------------------------------------------------- */

static bool is_token(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch <= 32 || ch >= 127 || strchr("()<>@,;:\\\"/[]?={}", ch))
            return false;
    }
    return true;
}

/* Framing headers belong to the server: a script cannot break them. */
static bool is_reserved(const char *name, size_t n, bool stream)
{
    static const char *const always[] = { "content-length", "transfer-encoding",
                                          "connection", NULL };
    for (int i = 0; always[i]; i++)
        if (strlen(always[i]) == n && strncasecmp(always[i], name, n) == 0)
            return true;
    return stream && n == 12 && strncasecmp(name, "content-type", 12) == 0;
}

/* Field values may hold visible characters, spaces and tabs (RFC 9110);
 * a CR or LF would let a value start a header or body of its own. */
static bool valid_value(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

/* With b NULL, only validates (raising Lua errors): callers validate
 * before they allocate, so an error cannot leak a half-built buffer. */
static void put_header_value(lua_State *L, struct buf *b, const char *name,
                             size_t nlen, int vidx)
{
    size_t vlen;
    const char *v = lua_tolstring(L, vidx, &vlen);
    if (!v)
        luaL_error(L, "header %s: value must be a string or number", name);
    if (!valid_value(v, vlen))
        luaL_error(L, "header %s: value contains a line break or control character", name);
    if (!b)
        return;
    buf_put(b, name, nlen);
    buf_put(b, ": ", 2);
    buf_put(b, v, vlen);
    buf_put(b, "\r\n", 2);
}

/* Appends the headers of the table at idx; a value may be a list (several
 * Set-Cookie lines, say). */
static void put_headers(lua_State *L, struct buf *b, int idx, bool stream)
{
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t nlen = 0;
        const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nlen) : NULL;
        if (!name || !is_token(name, nlen))
            luaL_error(L, "invalid header name %s", name ? name : "(not a string)");
        if (!is_reserved(name, nlen, stream)) {
            if (lua_istable(L, -1)) {
                int n = (int)lua_objlen(L, -1);
                for (int i = 1; i <= n; i++) {
                    lua_rawgeti(L, -1, i);
                    put_header_value(L, b, name, nlen, lua_gettop(L));
                    lua_pop(L, 1);
                }
            } else {
                put_header_value(L, b, name, nlen, lua_gettop(L));
            }
        }
        lua_pop(L, 1);
    }
}

/* core.respond(h, status, headers, body) */
static int l_respond(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    int status = (int)luaL_checkinteger(L, 2);
    size_t blen;
    const char *body = opt_lstring(L, 4, &blen);
    if (status < 200 || status > 599)
        return luaL_error(L, "status %d is not a final HTTP status", status);
    if (!c || (c->state != CONN_DISPATCHING && c->state != CONN_READING)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    bool no_body = status == 204 || status == 304;
    bool head_only = c->parser && http_is_head(c->parser);
    put_headers(L, NULL, 3, false);
    struct buf b = { 0 };
    char num[24];
    buf_puts(&b, "HTTP/1.1 ");
    buf_put(&b, num, fmt_dec(num, (uint64_t)status));
    buf_puts(&b, " ");
    buf_puts(&b, http_reason(status));
    buf_puts(&b, "\r\n");
    put_headers(L, &b, 3, false);
    if (!no_body) {
        buf_puts(&b, "Content-Length: ");
        buf_put(&b, num, fmt_dec(num, blen));
        buf_puts(&b, "\r\n");
    }
    if (!c->keep_alive)
        buf_puts(&b, "Connection: close\r\n");
    else if (c->parser && http_is_1_0(c->parser))
        buf_puts(&b, "Connection: keep-alive\r\n");
    buf_puts(&b, "\r\n");
    if (b.failed) {
        buf_free(&b);
        return luaL_error(L, "out of memory building a response");
    }
    conn_respond(c, b.data, b.len, body,
                 (no_body || head_only) ? 0 : blen);
    buf_free(&b);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.open(h, headers, retry_ms, heartbeat_s, slow_policy, reset_event) */
static int l_open(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    lua_Number retry = luaL_optnumber(L, 3, (lua_Number)vm_of(L)->w->cfg->retry_ms);
    lua_Number heartbeat = luaL_optnumber(L, 4, vm_of(L)->w->cfg->heartbeat);
    if (!(retry <= MAX_RETRY_MS))
        return luaL_error(L, "retry must be at most %d ms", MAX_RETRY_MS);
    if (!(heartbeat == 0 || (heartbeat >= MIN_HEARTBEAT && heartbeat <= 86400)))
        return luaL_error(L, "heartbeat must be 0 (off) or from %g to 86400 seconds", MIN_HEARTBEAT);
    const char *policy = luaL_optstring(L, 5, "close");
    size_t rlen;
    const char *reset = opt_lstring(L, 6, &rlen);
    if (strcmp(policy, "close") != 0 && strcmp(policy, "drop-oldest") != 0)
        return luaL_error(L, "slow-consumer policy must be \"close\" or \"drop-oldest\"");
    if (reset && (memchr(reset, '\n', rlen) || memchr(reset, '\r', rlen)))
        return luaL_error(L, "reset event name contains a line break");
    if (!c || c->state != CONN_DISPATCHING) {
        lua_pushboolean(L, 0);
        return 1;
    }
    put_headers(L, NULL, 2, true);
    c->st.chunked = c->parser && !http_is_1_0(c->parser);
    bool head_only = c->parser && http_is_head(c->parser);
    struct buf b = { 0 };
    buf_puts(&b, "HTTP/1.1 200 OK\r\n"
                 "Content-Type: text/event-stream\r\n"
                 "Cache-Control: no-cache\r\n"
                 "X-Accel-Buffering: no\r\n");
    put_headers(L, &b, 2, true);
    if (head_only)
        buf_puts(&b, "Content-Length: 0\r\n");
    else
        buf_puts(&b, c->st.chunked ? "Transfer-Encoding: chunked\r\n" : "Connection: close\r\n");
    buf_puts(&b, "\r\n");
    if (b.failed) {
        buf_free(&b);
        return luaL_error(L, "out of memory building a response");
    }
    if (head_only) {   /* a HEAD request learns the headers, nothing more */
        conn_respond(c, b.data, b.len, NULL, 0);
        buf_free(&b);
        lua_pushboolean(L, 0);
        return 1;
    }
    c->st.slow_policy = policy[0] == 'c' ? SLOW_CLOSE : SLOW_DROP_OLDEST;
    if (reset) {
        free(c->st.reset_event);
        c->st.reset_event = strndup(reset, rlen);
    }
    /* Something to send at once: proxies hold the headers until the first
     * body bytes, and the browser's open event waits for them too. */
    struct sse_event ev = { .retry_ms = retry >= 0 ? (long)retry : -1 };
    if (retry < 0) {
        ev.comment = "ok";
        ev.comment_len = 2;
    }
    struct frame *first = frame_sse(&ev);
    bool ok = first && conn_stream_open(c, b.data, b.len, first, heartbeat);
    frame_unref(first);
    buf_free(&b);
    lua_pushboolean(L, ok);
    return 1;
}

/* core.send(h, event, id, data, retry, comment) -> queued? */
static int l_send(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    struct sse_event ev = { .retry_ms = -1 };
    ev.event = opt_lstring(L, 2, &ev.event_len);
    ev.id = opt_lstring(L, 3, &ev.id_len);
    ev.data = opt_lstring(L, 4, &ev.data_len);
    if (!lua_isnoneornil(L, 5)) {
        lua_Number r = luaL_checknumber(L, 5);
        if (!(r >= 0 && r <= MAX_RETRY_MS))
            return luaL_error(L, "retry must be from 0 to %d ms", MAX_RETRY_MS);
        ev.retry_ms = (long)r;
    }
    ev.comment = opt_lstring(L, 6, &ev.comment_len);
    const char *bad = sse_event_invalid(&ev);
    if (bad)
        return luaL_error(L, "cannot send event: %s", bad);
    if (ev.retry_ms < 0 || ev.retry_ms > MAX_RETRY_MS)
        ev.retry_ms = -1;
    if (!c || c->state != CONN_STREAMING) {
        lua_pushboolean(L, 0);
        return 1;
    }
    /* Framing a big event is not the script's CPU: once it is queued, the
     * script must not be stopped for it. */
    struct luavm_charge charge;
    luavm_uncharged_begin(vm_of(L), &charge);
    struct frame *f = frame_sse(&ev);
    bool queued = false;
    if (f) {
        if (ev.data || ev.event || ev.id)
            f->flags |= FRAME_EVENT;
        queued = stream_send(&c->st, f);
        frame_unref(f);
    }
    luavm_uncharged_end(vm_of(L), &charge);
    if (!f)
        return luaL_error(L, "out of memory framing an event");
    lua_pushboolean(L, queued);
    return 1;
}

/* core.close(h): ends a stream after what is queued. */
static int l_close(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    if (c && c->state == CONN_STREAMING)
        stream_end(&c->st);
    return 0;
}

static int l_alive(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    lua_pushboolean(L, c && c->state == CONN_STREAMING);
    return 1;
}

/* core.watch(h): call the runtime's closed hook when this stream ends. */
static int l_watch(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    if (c)
        c->lua_watch = true;
    lua_pushboolean(L, c != NULL);
    return 1;
}

/* ---- channels --------------------------------------------------------- */

/* core.publish(channel, event, data) -> id, reached */
static int l_publish(lua_State *L)
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
    struct publish_result r;
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
    if (rc < 0)
        return luaL_error(L, "out of memory publishing to %s", ch);
    lua_pushnumber(L, (lua_Number)r.id);
    lua_pushinteger(L, r.reached);
    return 2;
}

/* core.subscribe(h, {channel...}, {view...}, last_id|nil, last_raw) */
static int l_subscribe(lua_State *L)
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
    int rc = channels_subscribe(vm->w->channels, &c->st, reqs, n, last_raw, (uint64_t)last);
    if (rc < 0)
        return luaL_error(L, "out of memory subscribing");
    lua_pushboolean(L, c->state == CONN_STREAMING);
    return 1;
}

static int l_subscribers(lua_State *L)
{
    size_t len;
    const char *ch = luaL_checklstring(L, 1, &len);
    lua_pushinteger(L, channels_subscribers(vm_of(L)->w->channels, ch, len));
    return 1;
}

/* core.history(prefix, max_events, ttl_seconds) */
static int l_history(lua_State *L)
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

/* Frames an event for a masked view by asking the runtime's transform. */
static struct frame *frame_for_view(void *ctx, int view, const struct event_src *src)
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

/* ---- timers ----------------------------------------------------------- */

struct script_timer {
    ev_timer timer;
    struct luavm *vm;
    int id;
    struct script_timer *next, *prev;
};

static _Thread_local struct script_timer *timers;   /* one worker per thread */
static _Thread_local unsigned next_timer_id;

static void timer_unlink(struct script_timer *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        timers = t->next;
    if (t->next)
        t->next->prev = t->prev;
}

static void on_script_timer(struct ev_loop *loop, ev_timer *ev, int revents)
{
    (void)revents;
    struct script_timer *t = ev->data;
    struct luavm *vm = t->vm;
    int id = t->id;
    if (!ev_is_active(ev)) {   /* one-shot: done after this call */
        timer_unlink(t);
        free(t);
    }
    (void)loop;
    lua_rawgeti(vm->L, LUA_REGISTRYINDEX, vm->ref_timer);
    lua_pushinteger(vm->L, id);
    luavm_call(vm, 1, 0, "timer");
}

/* core.timer(after_s, repeat_s) -> id */
static int l_timer(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    lua_Number after = luaL_checknumber(L, 1);
    lua_Number repeat = luaL_optnumber(L, 2, 0);
    /* Written to be false for NaN, which libev would abort on. */
    if (!(after >= 0 && after <= MAX_TIMER_S) || !(repeat >= 0 && repeat <= MAX_TIMER_S))
        return luaL_error(L, "timer intervals must be numbers from 0 to %d seconds", MAX_TIMER_S);
    if (repeat > 0 && repeat < MIN_TIMER_REPEAT_S)
        repeat = MIN_TIMER_REPEAT_S;   /* a repeating timer must not spin */
    struct script_timer *t = calloc(1, sizeof *t);
    if (!t)
        return luaL_error(L, "out of memory");
    t->vm = vm;
    t->id = (int)(++next_timer_id & 0x7fffffffu);
    ev_timer_init(&t->timer, on_script_timer, after, repeat);
    t->timer.data = t;
    ev_timer_start(vm->w->loop, &t->timer);
    t->next = timers;
    if (timers)
        timers->prev = t;
    timers = t;
    lua_pushinteger(L, t->id);
    return 1;
}

static int l_timer_stop(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    int id = (int)luaL_checkinteger(L, 1);
    for (struct script_timer *t = timers; t; t = t->next) {
        if (t->id == id) {
            ev_timer_stop(vm->w->loop, &t->timer);
            timer_unlink(t);
            free(t);
            break;
        }
    }
    return 0;
}

void lua_api_stop_timers(struct luavm *vm)
{
    while (timers) {
        struct script_timer *t = timers;
        ev_timer_stop(vm->w->loop, &t->timer);
        timer_unlink(t);
        free(t);
    }
}

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

static int l_now(lua_State *L)
{
    lua_pushnumber(L, ev_now(vm_of(L)->w->loop));
    return 1;
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

static void set_int(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static int l_stats(lua_State *L)
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

/* core.set_hooks{dispatch=, timer=, closed=, transform=, reload=} */
static int l_set_hooks(lua_State *L)
{
    struct luavm *vm = vm_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    struct { const char *name; int *ref; } hooks[] = {
        { "dispatch", &vm->ref_dispatch }, { "timer", &vm->ref_timer },
        { "closed", &vm->ref_closed }, { "transform", &vm->ref_transform },
        { "reload", &vm->ref_reload },
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
        { "publish", l_publish }, { "subscribe", l_subscribe },
        { "subscribers", l_subscribers }, { "history", l_history },
        { "timer", l_timer }, { "timer_stop", l_timer_stop },
        { "now", l_now }, { "log", l_log }, { "stats", l_stats },
        { "set_hooks", l_set_hooks }, { "drain", l_drain }, { NULL, NULL },
    };
    struct luavm *vm = lua_touserdata(L, lua_upvalueindex(1));
    lua_createtable(L, 0, 24);
    /* Without a worker (--check) only what loading scripts needs exists. */
    for (const luaL_Reg *f = fns; vm->w && f->name; f++) {
        lua_pushlightuserdata(L, vm);
        lua_pushcclosure(L, f->func, 1);
        lua_setfield(L, -2, f->name);
    }
    lua_pushcfunction(L, luavm_sandbox_run);
    lua_setfield(L, -2, "run");
    lua_pushcfunction(L, luavm_budget_spent);
    lua_setfield(L, -2, "budget_spent");
    lua_pushcfunction(L, l_listdir);
    lua_setfield(L, -2, "listdir");
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_log, 1);
    lua_setfield(L, -2, "log");
    lua_pushinteger(L, vm->cpu_budget_ms);
    lua_setfield(L, -2, "cpu_budget_ms");
    lua_pushnumber(L, (lua_Number)vm->mem_limit);
    lua_setfield(L, -2, "memory_limit");
    lua_pushstring(L, SLUICE_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}

/* ---- calls from C into the runtime ------------------------------------ */

int lua_api_start(struct luavm *vm, const char *apps_dir, bool check_only)
{
    lua_State *L = vm->L;
    vm->ref_dispatch = vm->ref_timer = vm->ref_closed = LUA_NOREF;
    vm->ref_transform = vm->ref_reload = LUA_NOREF;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, open_core, 1);
    lua_setfield(L, -2, "sluice.core");
    lua_pop(L, 2);
    if (vm->w && vm->w->channels)
        channels_set_framer(vm->w->channels, frame_for_view, vm);

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

void lua_api_dispatch(struct luavm *vm, struct conn *c)
{
    lua_State *L = vm->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, vm->ref_dispatch);
    lua_pushnumber(L, worker_handle(vm->w, c));
    push_request(L, c);
    luavm_call(vm, 7, 0, "dispatch");
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
    luavm_call(vm, 0, 0, "reload");
}
