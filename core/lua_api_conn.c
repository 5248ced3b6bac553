/* sluice.core, requests and streams: answers, stream heads, events sent
 * to one stream, closing and watching it. Talks to the transport (conn.h)
 * through a connection's handle. */
#include "lua_api_internal.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <lauxlib.h>

#include "access_log.h"
#include "buf.h"
#include "conn.h"
#include "frame.h"
#include "http.h"
#include "response.h"
#include "sse.h"
#include "worker.h"

#define MAX_RETRY_MS 86400000
#define MIN_HEARTBEAT 0.1

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
    /* The ids are the server's too: one of each on every answer. */
    static const char *const always[] = { "content-length", "transfer-encoding",
                                          "connection", "x-request-id", "traceparent",
                                          "tracestate", NULL };
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
    if (b)
        head_field(b, name, nlen, v, vlen);
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
int l_respond(lua_State *L)
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
    put_headers(L, NULL, 3, false);
    struct buf b = { 0 };
    put_headers(L, &b, 3, false);
    if (b.failed) {
        buf_free(&b);
        return luaL_error(L, "out of memory building a response");
    }
    conn_answer(c, status, b.data, b.len, body, blen);
    buf_free(&b);
    lua_pushboolean(L, 1);
    return 1;
}

/* core.open(h, headers, retry_ms, heartbeat_s, slow_policy, reset_event) */
int l_open(lua_State *L)
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
    struct buf b = { 0 };
    buf_puts(&b, "Content-Type: text/event-stream\r\n"
                 "Cache-Control: no-cache\r\n"
                 "X-Accel-Buffering: no\r\n");
    put_headers(L, &b, 2, true);
    if (b.failed || !stream_set_policy(conn_stream(c), policy[0] == 'c' ? SLOW_CLOSE : SLOW_DROP_OLDEST,
                                       reset, rlen)) {
        buf_free(&b);
        return luaL_error(L, "out of memory building a response");
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
int l_send(lua_State *L)
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

/* core.close(h, reason): ends a stream after what is queued; reason (for
 * the access log) is "closed_by_app" unless the runtime names another. */
int l_close(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    const char *reason = luaL_optstring(L, 2, "closed_by_app");
    int why = access_log_end_parse(reason);
    if (why < 0)
        return luaL_error(L, "unknown close reason %s", reason);
    if (c && c->state == CONN_STREAMING) {
        stream_note_end(&c->st, (enum stream_end)why);
        stream_end(&c->st);
    }
    return 0;
}

int l_alive(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    lua_pushboolean(L, c && c->state == CONN_STREAMING);
    return 1;
}

/* core.answer_later(h): the request being dispatched is answered later
 * (its handler waits for Redis). false: it cannot be. */
int l_answer_later(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    lua_pushboolean(L, c && conn_answer_later(c));
    return 1;
}

/* core.watch(h): call the runtime's closed hook when this stream ends. */
int l_watch(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    if (c)
        c->lua_watch = true;
    lua_pushboolean(L, c != NULL);
    return 1;
}
