#include "luavm.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lualib.h>

#include "log.h"
#include "metrics.h"
#include "worker.h"

/* The signal handler needs the state of the thread it interrupts. */
static _Thread_local struct luavm *current_vm;

/* Raised on every instruction once the budget is spent, so a script that
 * catches the error with pcall cannot keep looping: only the C boundary in
 * luavm_sandbox_run clears the hook. */
static void budget_hook(lua_State *L, lua_Debug *ar)
{
    struct luavm *vm = current_vm;
    if (!vm || !vm->budget_expired)
        return;
    /* Name the line that was running: that is where the loop is. */
    if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
        luaL_error(L, "%s:%d: script exceeded its CPU budget of %d ms", ar->short_src,
                   ar->currentline, vm->cpu_budget_ms);
    luaL_error(L, "script exceeded its CPU budget of %d ms", vm->cpu_budget_ms);
}

/* The watchdog ticks every WATCHDOG_SHARE-th of the budget of this thread's
 * CPU time, armed once: a script call costs no system call. A call seen by
 * more than WATCHDOG_SHARE ticks has used at least the whole budget (and
 * at most a tick more). */
#define WATCHDOG_SHARE 4
#define WATCHDOG_GIVE_UP 10

static void on_cpu_timer(int sig, siginfo_t *info, void *uctx)
{
    (void)sig; (void)info; (void)uctx;
    struct luavm *vm = current_vm;
    if (!vm || vm->sandbox_depth == 0 || vm->uncharged)
        return;
    if (vm->seen_seq != vm->call_seq) {   /* a call that started since */
        vm->seen_seq = vm->call_seq;
        vm->ticks = 1;
        return;
    }
    if (++vm->ticks <= WATCHDOG_SHARE)
        return;
    if (vm->ticks > WATCHDOG_SHARE * WATCHDOG_GIVE_UP) {
        /* Ten budgets and the hook has not run: the script is inside one
         * long C call (a pathological string.find, say) that no hook can
         * interrupt. A server that never answers again is worse than one
         * that exits for its supervisor to restart. */
        static const char msg[] = "sluice: a script call is stuck in C code past ten times "
                                  "its CPU budget; exiting\n";
        if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
            /* nothing left to report it to */
        }
        abort();
    }
    vm->budget_expired = 1;
    /* lua_sethook is the one Lua API call that is safe in a signal handler
     * (LuaJIT's own interrupt handler does the same). */
    lua_sethook(vm->L, budget_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct luavm *vm = ud;
    if (nsize == 0) {
        free(ptr);
        vm->mem_used -= osize;
        return NULL;
    }
    /* Only script code is refused memory: the runtime must still be able to
     * answer 500 and clean up after the script that ran out. */
    if (vm->mem_limit && nsize > osize && vm->sandbox_depth > 0 &&
        vm->mem_used + (nsize - osize) > vm->mem_limit) {
        vm->mem_exceeded = true;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p)
        vm->mem_used = vm->mem_used - osize + nsize;
    return p;
}

/* Message handler: the message with a stack traceback. An error value
 * that is not a string gets the location of the Lua code that raised it,
 * so every logged script error names its file and line. */
static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        lua_Debug ar;
        const char *type = luaL_typename(L, 1);
        msg = lua_pushfstring(L, "(error object is a %s value)", type);
        for (int level = 1; lua_getstack(L, level, &ar); level++) {
            if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
                msg = lua_pushfstring(L, "%s:%d: (error object is a %s value)",
                                      ar.short_src, ar.currentline, type);
                break;
            }
        }
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

bool luavm_call(struct luavm *vm, int nargs, int nresults, const char *what)
{
    lua_State *L = vm->L;
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    int rc = lua_pcall(L, nargs, nresults, base);
    lua_remove(L, base);
    if (rc == 0)
        return true;
    log_error("%s: %s", what, lua_tostring(L, -1));
    lua_pop(L, 1);
    return false;
}


/* The bookkeeping around one sandboxed call (core.run, core.resume). */
struct sandbox_call {
    bool outermost;
    sig_atomic_t uncharged;
    bool budget_stop;
};

static void sandbox_enter(struct luavm *vm, struct sandbox_call *sc)
{
    sc->outermost = vm->sandbox_depth == 0;
    if (sc->outermost) {
        vm->budget_expired = 0;
        vm->mem_exceeded = false;
        vm->call_seq++;
    }
    vm->sandbox_depth++;
    /* Script code called from inside an uncharged C call (a view
     * transform during a publish) is charged again while it runs. */
    sc->uncharged = vm->uncharged;
    vm->uncharged = 0;
}

static void sandbox_leave(struct luavm *vm, lua_State *L, struct sandbox_call *sc)
{
    sc->budget_stop = sc->outermost && vm->budget_expired;   /* before it is cleared */
    vm->uncharged = sc->uncharged;
    vm->sandbox_depth--;
    if (sc->outermost) {
        /* Out of the call first, then clear: a late tick is harmless now. */
        lua_sethook(L, NULL, 0, 0);
        vm->budget_expired = 0;
    }
}

/* The error message on top of L (rc from the call) as the script's
 * caller gets it: counted, and a memory error named as the limit. */
static void sandbox_error(struct luavm *vm, lua_State *L, int rc, const struct sandbox_call *sc)
{
    if (vm->w)   /* counted for the metrics; the caller logs it */
        metrics_script_error(vm->w->id, lua_tostring(L, -1), sc->budget_stop);
    if (rc == LUA_ERRMEM || vm->mem_exceeded) {
        lua_pop(L, 1);
        lua_pushfstring(L, "script exceeded the Lua memory limit of %d MiB",
                        (int)(vm->mem_limit >> 20));
        if (sc->outermost)
            lua_gc(L, LUA_GCCOLLECT, 0);
    } else if (!lua_isstring(L, -1)) {
        lua_pop(L, 1);
        lua_pushstring(L, "(error object is not a string)");
    }
}

int luavm_sandbox_run(lua_State *L)
{
    struct luavm *vm = current_vm;
    luaL_checktype(L, 1, LUA_TFUNCTION);
    int nargs = lua_gettop(L) - 1;
    struct sandbox_call sc;
    sandbox_enter(vm, &sc);
    lua_pushcfunction(L, traceback);
    lua_insert(L, 1);
    int rc = lua_pcall(L, nargs, LUA_MULTRET, 1);
    sandbox_leave(vm, L, &sc);
    lua_remove(L, 1);   /* the traceback function */
    if (rc != 0) {
        sandbox_error(vm, L, rc, &sc);
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushboolean(L, 1);
    lua_insert(L, 1);
    return lua_gettop(L);
}

int luavm_sandbox_resume(lua_State *L)
{
    struct luavm *vm = current_vm;
    lua_State *co = lua_tothread(L, 1);
    luaL_argcheck(L, co && co != L, 1, "coroutine expected");
    int nargs = lua_gettop(L) - 1;
    if (!lua_checkstack(co, nargs + LUA_MINSTACK))
        return luaL_error(L, "too many arguments to resume");
    lua_xmove(L, co, nargs);
    struct sandbox_call sc;
    sandbox_enter(vm, &sc);
    int rc = lua_resume(co, nargs);
    sandbox_leave(vm, L, &sc);
    lua_settop(L, 0);
    if (rc != 0 && rc != LUA_YIELD) {
        /* The traceback of where the script failed, in its coroutine. */
        const char *msg = lua_tostring(co, -1);
        luaL_traceback(L, co, msg ? msg : "(error object is not a string)", 0);
        lua_pop(co, 1);
        sandbox_error(vm, L, rc, &sc);
        lua_pushboolean(L, 0);
        lua_insert(L, -2);
        return 2;
    }
    int nres = lua_gettop(co);
    if (!lua_checkstack(L, nres + 2))
        return luaL_error(L, "too many results to resume");
    lua_pushboolean(L, 1);
    lua_pushboolean(L, rc == 0);   /* done, or waiting (yielded) */
    lua_xmove(co, L, nres);
    return nres + 2;
}

void luavm_uncharged_begin(struct luavm *vm, struct luavm_charge *saved)
{
    /* Ticks of this call so far; an older count belongs to another call. */
    saved->ticks = vm->seen_seq == vm->call_seq ? vm->ticks : 0;
    vm->uncharged++;
}

void luavm_uncharged_end(struct luavm *vm, const struct luavm_charge *saved)
{
    /* Forget what the call cost, then the budget it may have spent. A tick
     * landing in between only sets the hook again, as it would have. */
    vm->seen_seq = vm->call_seq;
    vm->ticks = saved->ticks;
    vm->uncharged--;
    if (vm->sandbox_depth > 0 && saved->ticks <= WATCHDOG_SHARE && vm->budget_expired) {
        vm->budget_expired = 0;
        lua_sethook(vm->L, NULL, 0, 0);
    }
}

int luavm_budget_spent(lua_State *L)
{
    struct luavm *vm = current_vm;
    lua_pushboolean(L, vm && vm->budget_expired);
    return 1;
}

static bool setup_cpu_timer(struct luavm *vm)
{
    struct sigaction sa = { 0 };
    sa.sa_sigaction = on_cpu_timer;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGVTALRM, &sa, NULL) < 0) {
        log_error("sigaction(SIGVTALRM): %s", strerror(errno));
        return false;
    }
    struct sigevent sev = { 0 };
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGVTALRM;
    sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    /* CPU time of this thread: a handler blocked by nothing but itself. */
    if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &vm->cpu_timer) < 0) {
        log_error("timer_create: %s", strerror(errno));
        return false;
    }
    long tick_ns = (long)vm->cpu_budget_ms * 1000000L / WATCHDOG_SHARE;
    if (tick_ns < 1000000L)
        tick_ns = 1000000L;
    struct itimerspec its;
    its.it_value.tv_sec = its.it_interval.tv_sec = tick_ns / 1000000000L;
    its.it_value.tv_nsec = its.it_interval.tv_nsec = tick_ns % 1000000000L;
    if (timer_settime(vm->cpu_timer, 0, &its, NULL) < 0) {
        log_error("timer_settime: %s", strerror(errno));
        return false;
    }
    return true;
}

struct luavm *luavm_new(struct worker *w, const char *lua_dir,
                        size_t mem_limit, int cpu_budget_ms)
{
    struct luavm *vm = calloc(1, sizeof *vm);
    if (!vm)
        return NULL;
    vm->w = w;
    vm->mem_limit = mem_limit;
    vm->cpu_budget_ms = cpu_budget_ms;
    vm->L = lua_newstate(capped_alloc, vm);
    if (!vm->L) {
        free(vm);
        return NULL;
    }
    current_vm = vm;
    if (cpu_budget_ms > 0)
        vm->cpu_timer_ok = setup_cpu_timer(vm);
    lua_State *L = vm->L;
    /* A collection cycle starts when the heap reaches 1.5x what was live
     * after the last (LuaJIT's default: 2x). Stream objects dominate a
     * worker's heap, so this is ~50 B of RSS per idle stream, at no
     * measurable cost in handler or churn CPU (bench/run handler churn). */
    lua_gc(L, LUA_GCSETPAUSE, 150);
    luaL_openlibs(L);
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", lua_dir, lua_dir);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
    return vm;
}

void luavm_free(struct luavm *vm)
{
    if (!vm)
        return;
    if (vm->cpu_timer_ok && timer_delete(vm->cpu_timer) < 0)
        log_warn("timer_delete: %s", strerror(errno));
    lua_close(vm->L);
    if (current_vm == vm)
        current_vm = NULL;
    free(vm);
}

size_t luavm_memory(const struct luavm *vm)
{
    return vm->mem_used;
}
