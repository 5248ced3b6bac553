/* The worker's Lua state: a memory-capped allocator, a CPU budget for
 * script code, and protected calls that turn every error into a log line. */
#ifndef SLUICE_LUAVM_H
#define SLUICE_LUAVM_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <lua.h>

struct worker;

struct luavm {
    lua_State *L;
    struct worker *w;
    size_t mem_used;
    size_t mem_limit;          /* 0: unlimited */
    int cpu_budget_ms;         /* 0: no watchdog */
    volatile sig_atomic_t sandbox_depth;   /* > 0 while script code runs */
    timer_t cpu_timer;
    bool cpu_timer_ok;
    volatile sig_atomic_t budget_expired;
    volatile unsigned call_seq;       /* bumped when a script call starts */
    unsigned seen_seq;                /* the call the watchdog last saw */
    int ticks;                        /* watchdog ticks seen in that call */
    bool mem_exceeded;
    /* > 0 inside a C API call whose CPU is not charged to the script
     * (framing and fan-out of a publish): a script must not be stopped
     * right after a call that already took effect. */
    volatile sig_atomic_t uncharged;
    /* Runtime entry points (registry references). */
    int ref_dispatch, ref_timer, ref_closed, ref_transform, ref_reload, ref_published;
    /* Cluster mode: the last ticket of a publish waiting for Redis. */
    uint64_t last_ticket;
};

/* Creates the state, sets package.path to lua_dir, and installs the C
 * half of the API as the module "sluice.core". NULL on failure. */
struct luavm *luavm_new(struct worker *w, const char *lua_dir,
                        size_t mem_limit, int cpu_budget_ms);
void luavm_free(struct luavm *vm);

/* Calls the function below nargs arguments on the stack as trusted runtime
 * code. On error logs it with a traceback and returns false; the stack is
 * left as lua_pcall leaves it minus the message. */
bool luavm_call(struct luavm *vm, int nargs, int nresults, const char *what);

/* lua_CFunction: core.run(fn, ...) -> true, results... | false, message.
 * Runs script code under the CPU budget and the memory cap. */
int luavm_sandbox_run(lua_State *L);

/* lua_CFunction: core.resume(co, ...) -> true, done, results... | false,
 * message (with co's traceback). Resumes a coroutine of script code under
 * the CPU budget and the memory cap, each resume a budget of its own;
 * done is false when it yielded. */
int luavm_sandbox_resume(lua_State *L);

/* Brackets a C API call whose CPU time is not charged to the calling
 * script: ticks seen meanwhile are forgotten, and a budget that ran out
 * meanwhile is restored, so the script is not stopped just after the call
 * took effect. Script code called from inside (view transforms) is still
 * charged: luavm_sandbox_run resumes charging for its duration. */
struct luavm_charge { int ticks; };
void luavm_uncharged_begin(struct luavm *vm, struct luavm_charge *saved);
void luavm_uncharged_end(struct luavm *vm, const struct luavm_charge *saved);

/* lua_CFunction: core.budget_spent() -> true once the running script call
 * has used its CPU budget (a message handler must not run then). */
int luavm_budget_spent(lua_State *L);

/* Bytes the Lua state holds. */
size_t luavm_memory(const struct luavm *vm);

#endif
