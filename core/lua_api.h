/* The C half of the Lua API: the module "sluice.core" that lua/sluice/
 * builds on, and the calls from C into the Lua runtime. */
#ifndef SLUICE_LUA_API_H
#define SLUICE_LUA_API_H

#include <stdbool.h>

struct luavm;
struct conn;
struct worker;

/* Registers sluice.core, loads the runtime and the apps. With check_only,
 * only loads and validates the apps; returns the number of problems. */
int lua_api_start(struct luavm *vm, const char *apps_dir, bool check_only);

/* Hands a complete request on c to the runtime's router. */
void lua_api_dispatch(struct luavm *vm, struct conn *c);

/* Tells the runtime a stream it watches has closed. */
void lua_api_stream_closed(struct luavm *vm, struct conn *c);

/* Reloads changed app scripts (file watch, SIGHUP). */
void lua_api_reload(struct luavm *vm);

/* Stops every script timer (shutdown). */
void lua_api_stop_timers(struct luavm *vm);

#endif
