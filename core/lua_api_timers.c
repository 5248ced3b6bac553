/* sluice.core, the clock and script timers: core.now, core.timer,
 * core.timer_stop on the worker's event loop, and core.timers_active. (The test kit's core
 * replaces this file with a clock the test moves.) */
#include "lua_api_internal.h"

#include <stdlib.h>

#include <lauxlib.h>

#include "luavm.h"
#include "redis_bus.h"
#include "worker.h"

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
int l_timer(lua_State *L)
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

int l_timer_stop(lua_State *L)
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

int l_now(lua_State *L)
{
    lua_pushnumber(L, ev_now(vm_of(L)->w->loop));
    return 1;
}

/* core.timers_active() -> whether this node runs the app timers now (in
 * cluster mode: it holds the timer lease). */
int l_timers_active(lua_State *L)
{
    lua_pushboolean(L, redis_bus_timers_active());
    return 1;
}
