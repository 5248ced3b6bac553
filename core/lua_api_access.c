/* sluice.core, the access log's Lua side: what the runtime adds to a
 * request's line (route, variant, the app's req:log fields, the
 * Last-Event-ID a stream resumed from). Encoded here, bounded, so a line
 * always parses and never grows with what a script logs. */
#include "lua_api_internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "access_log.h"
#include "buf.h"
#include "conn.h"
#include "metrics.h"

#define MAX_FIELDS 8          /* req:log keys per request */
#define MAX_KEY 32
#define MAX_VALUE 256         /* longer strings are cut */
#define MAX_LAST_EVENT_ID 128

static void put_opt_string(lua_State *L, struct buf *b, const char *name, int idx, size_t max)
{
    buf_puts(b, ",\"");
    buf_puts(b, name);
    buf_puts(b, "\":");
    size_t n;
    const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, &n) : NULL;
    if (s)
        access_log_json_string(b, s, n > max ? max : n);
    else
        buf_puts(b, "null");
}

static bool valid_key(const char *k, size_t n)
{
    if (n == 0 || n > MAX_KEY)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)k[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/* The fields table at idx as "fields":{...}: string keys, string, number
 * or boolean values, the first MAX_FIELDS in table order; others skipped. */
static void put_fields(lua_State *L, struct buf *b, int idx)
{
    if (!lua_istable(L, idx))
        return;
    int n = 0;
    buf_puts(b, ",\"fields\":{");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t klen = 0;
        int vt = lua_type(L, -1);
        /* (lua_tolstring only on a string key: it would convert a number
         * key in place and confuse lua_next.) */
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &klen) : NULL;
        if (n < MAX_FIELDS && k && valid_key(k, klen) &&
            (vt == LUA_TSTRING || vt == LUA_TNUMBER || vt == LUA_TBOOLEAN)) {
            if (n++)
                buf_puts(b, ",");
            access_log_json_string(b, k, klen);
            buf_puts(b, ":");
            if (vt == LUA_TBOOLEAN) {
                buf_puts(b, lua_toboolean(L, -1) ? "true" : "false");
            } else if (vt == LUA_TNUMBER) {
                lua_Number x = lua_tonumber(L, -1);
                if (!isfinite(x))
                    buf_puts(b, "null");
                else if (x == floor(x) && fabs(x) < 9007199254740992.0)
                    buf_printf(b, "%.0f", x);
                else
                    buf_printf(b, "%.17g", x);
            } else {
                size_t vlen;
                const char *v = lua_tolstring(L, -1, &vlen);
                access_log_json_string(b, v, vlen > MAX_VALUE ? MAX_VALUE : vlen);
            }
        }
        lua_pop(L, 1);
    }
    buf_puts(b, "}");
}

/* core.access_note(h, route, variant, fields, last_event_id): replaces
 * what the runtime adds to the request's line. */
int l_access_note(lua_State *L)
{
    struct conn *c = conn_arg(L, 1);
    if (!c)
        return 0;
    /* The metrics' route and variant labels (bounded: declared patterns). */
    size_t rlen = 0, vlen = 0;
    const char *route = lua_type(L, 2) == LUA_TSTRING ? lua_tolstring(L, 2, &rlen) : NULL;
    const char *variant = lua_type(L, 3) == LUA_TSTRING ? lua_tolstring(L, 3, &vlen) : NULL;
    c->mkey = metrics_key(route, rlen, variant, vlen);
    if (!c->rec || !c->rec->request)
        return 0;
    struct buf b = { 0 };
    put_opt_string(L, &b, "route", 2, 1024);
    put_opt_string(L, &b, "variant", 3, 128);
    put_fields(L, &b, 4);
    bool resumed = lua_type(L, 5) == LUA_TSTRING;
    if (resumed)
        put_opt_string(L, &b, "last_event_id", 5, MAX_LAST_EVENT_ID);
    buf_put(&b, "", 1);   /* the NUL: the record takes the buffer as a string */
    if (b.failed) {
        buf_free(&b);
        return 0;
    }
    access_rec_set_app(c->rec, b.data, b.len - 1);
    c->rec->resumed = resumed;
    return 0;
}
