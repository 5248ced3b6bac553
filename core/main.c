/* sluice: the command line; then the process (core/process.h) runs. */
#include <errno.h>
#include <dirent.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access_log.h"
#include "config.h"
#include "log.h"
#include "lua_api.h"
#include "luavm.h"
#include "process.h"
#include "quota.h"
#include "signals.h"

static void usage(FILE *out, const struct config *d)
{
    fprintf(out,
"usage: sluice [options]            serve the apps\n"
"       sluice test [DIR]           run an app project's specs with the test kit\n"
"       sluice --check DIR          load and validate the apps in DIR, then exit\n"
"       sluice reload --pid-file F  ask a running server to reload its apps\n"
"\n"
"  --listen HOST:PORT        address to serve on (default %s)\n"
"  --apps DIR                directory of app scripts, every *.lua (default %s)\n"
"  --lua-path DIR            the sluice Lua library (default: lua/ beside the binary)\n"
"  --max-conns N             connections at once; more get 503 (default: open-files limit - 64)\n"
"  --backlog N               listen backlog (default %d)\n"
"  --max-header-bytes N      request line and headers; 431 past it (default %zu)\n"
"  --max-headers N           header fields per request; 431 past it (default %zu)\n"
"  --max-body-bytes N        request body; 413 past it (default %zu)\n"
"  --max-queued-bytes N      output queued per connection; a stream past it is a\n"
"                            slow consumer (default %zu)\n"
"  --header-timeout S        seconds to receive a whole request; 408 after (default %g)\n"
"  --keepalive-timeout S     idle keep-alive connections close after (default %g)\n"
"  --send-timeout S          a client that reads nothing of what is queued for it\n"
"                            this long is disconnected (default %g)\n"
"  --heartbeat S             stream heartbeat comment interval, 0 = off (default %g)\n"
"  --retry MS                retry: hint sent when a stream opens, -1 = none (default %ld)\n"
"  --history-len N           events kept per channel for resume (default %zu)\n"
"  --history-ttl S           seconds an event stays in history (default %g)\n"
"  --max-history-bytes N     history of all channels together; past it the\n"
"                            oldest events go first, 0 = no bound (default %zu)\n"
"  --lua-cpu-budget MS       CPU a script call may use before it is stopped,\n"
"                            0 = no limit and JIT-compiled scripts (default %d)\n"
"  --lua-memory MB           Lua memory cap per worker, 0 = none (default %zu)\n"
"  --no-watch                do not reload when files in --apps change\n"
"  --reload-debounce S       quiet time before a reload (default %g)\n"
"  --shutdown-grace S        time to flush streams on SIGTERM (default %g)\n"
"  --max-streams N           open streams of the process past which new streams\n"
"                            get 503 with Retry-After, 0 = no limit (default 0)\n"
"  --shed-queued-bytes N     output queued on all connections past which new\n"
"                            streams get 503 with Retry-After, 0 = off (default 0)\n"
"  --quota-keys N            (route, key) entries the quota table holds (default %zu)\n"
"  --workers N               worker threads, each with its own loop and Lua state\n"
"                            (default: the CPUs this process may run on)\n"
"  --reuseport               one listening socket per worker (SO_REUSEPORT)\n"
"                            instead of one shared by all\n"
"  --redis URL               several nodes as one service: ids, history and live\n"
"                            events through Redis, redis://[:password@]host:port[/db]\n"
"  --redis-prefix P          prefix of every Redis key and channel (default %s)\n"
"  --pid-file FILE           write the process id here\n"
"  --log-level LEVEL         debug, info, warn or error (default info)\n"
"  --log-format FORMAT       the server's own log lines: text or json (default text)\n"
"  --access-log FILE         one JSON line per request and per ended stream, to\n"
"                            FILE (reopened on SIGUSR1) or - for stdout (default off)\n"
"  --admin-listen HOST:PORT  serve /metrics, /healthz, /readyz and /status on this\n"
"                            address of its own (default off)\n"
"  --no-histograms           leave out the latency, duration and lifetime histograms\n"
"  --version, --help\n",
            d->listen, d->apps_dir, d->backlog, d->max_head, d->max_headers,
            d->max_body, d->max_queued, d->header_timeout, d->keepalive_timeout,
            d->send_timeout,
            d->heartbeat, d->retry_ms, d->history_len, d->history_ttl,
            d->history_bytes, d->lua_cpu_ms,
            d->lua_mem >> 20, d->reload_debounce, d->shutdown_grace, d->quota_keys,
            d->redis_prefix);
}

static int parse_num(const char *opt, const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < min || v > max) {
        fprintf(stderr, "sluice: %s wants a number from %g to %g, got \"%s\"\n",
                opt, min, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* lua/ beside the executable, so a checkout runs without installing. */
static char *default_lua_dir(void)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return strdup("lua");
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = '\0';
    char *dir = malloc(strlen(exe) + 5);
    if (dir)
        sprintf(dir, "%s/lua", exe);
    return dir;
}

/* The CPUs this process may run on (taskset, cgroups' cpusets). */
static unsigned cpus_available(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0) {
        log_warn("sched_getaffinity: %s; one worker", strerror(errno));
        return 1;
    }
    int n = CPU_COUNT(&set);
    return n > 0 ? (unsigned)n : 1;
}

static int raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
        log_warn("getrlimit: %s", strerror(errno));
        return 1024;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            log_warn("setrlimit: %s", strerror(errno));
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
            return 1024;
    }
    return rl.rlim_cur > INT_MAX ? INT_MAX : (int)rl.rlim_cur;
}

static int send_reload(const char *pid_file)
{
    if (!pid_file) {
        fprintf(stderr, "sluice reload: --pid-file FILE is required\n");
        return 2;
    }
    FILE *f = fopen(pid_file, "r");
    long pid = 0;
    if (!f || fscanf(f, "%ld", &pid) != 1 || pid <= 1) {
        fprintf(stderr, "sluice reload: no process id in %s\n", pid_file);
        if (f)
            fclose(f);
        return 1;
    }
    fclose(f);
    if (kill((pid_t)pid, SIGHUP) < 0) {
        fprintf(stderr, "sluice reload: process %ld: %s\n", pid, strerror(errno));
        return 1;
    }
    printf("sent SIGHUP to %ld\n", pid);
    return 0;
}

/* A missing or unreadable apps directory is a mistake in the command line
 * or the deployment, not a server with no routes: refuse to start. (A
 * broken script only warns: the others are still worth serving.) */
static bool apps_dir_usable(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) {
        log_error("apps directory %s: %s", dir, strerror(errno));
        return false;
    }
    errno = 0;
    bool readable = readdir(d) != NULL || errno == 0;
    if (!readable)
        log_error("apps directory %s: %s", dir, strerror(errno));
    if (closedir(d) < 0)
        log_warn("closedir %s: %s", dir, strerror(errno));
    return readable;
}

static int check_apps(struct config *cfg, const char *dir)
{
    if (!apps_dir_usable(dir))
        return 1;
    struct luavm *vm = luavm_new(NULL, cfg->lua_dir, 0, 0);
    if (!vm)
        return 2;
    int problems = lua_api_start(vm, dir, true);
    luavm_free(vm);
    if (problems < 0)
        return 2;
    if (problems > 0) {
        fprintf(stderr, "%s: %d problem(s)\n", dir, problems);
        return 1;
    }
    printf("%s: ok\n", dir);
    return 0;
}

/* `sluice test [DIR] [busted options]`: runs an app project's specs with
 * the test kit, through bin/sluice-test beside this binary, which is told
 * (SLUICE_BIN) to start this very binary. Returns only on failure. */
static int run_app_tests(char **argv)
{
    char exe[PATH_MAX], script[PATH_MAX + 32];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        fprintf(stderr, "sluice test: cannot find this binary: %s\n", strerror(errno));
        return 2;
    }
    exe[n] = '\0';
    if (setenv("SLUICE_BIN", exe, 1) < 0) {
        fprintf(stderr, "sluice test: setenv: %s\n", strerror(errno));
        return 2;
    }
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = '\0';
    snprintf(script, sizeof script, "%s/bin/sluice-test", exe);
    argv[1] = script;               /* argv[0] stays; the script ignores it */
    execv(script, argv + 1);
    fprintf(stderr, "sluice test: cannot run %s: %s\n", script, strerror(errno));
    return 2;
}

int main(int argc, char **argv)
{
    struct config cfg, defaults;
    config_defaults(&cfg);
    defaults = cfg;
    const char *check_dir = NULL;
    if (argc > 1 && strcmp(argv[1], "test") == 0)
        return run_app_tests(argv);
    bool reload_cmd = argc > 1 && strcmp(argv[1], "reload") == 0;
    if (reload_cmd) {
        argv[1] = argv[0];
        argv++;
        argc--;
    }
    enum { O_LISTEN = 256, O_APPS, O_LUA, O_MAXCONNS, O_BACKLOG, O_MAXHEAD,
           O_MAXHEADERS, O_MAXBODY, O_MAXQUEUED, O_HEADERTO, O_KATO, O_SENDTO, O_HB,
           O_RETRY, O_HLEN, O_HTTL, O_HBYTES, O_CPU, O_MEM, O_NOWATCH, O_DEBOUNCE,
           O_GRACE, O_PID, O_LOG, O_LOGFMT, O_ACCESS, O_CHECK, O_VERSION, O_HELP, O_WORKERS,
           O_REUSEPORT, O_MAXSTREAMS, O_SHEDQUEUED, O_QUOTAKEYS, O_ADMIN, O_NOHIST,
           O_REDIS, O_REDIS_PREFIX };
    static const struct option opts[] = {
        { "listen", 1, 0, O_LISTEN }, { "apps", 1, 0, O_APPS },
        { "lua-path", 1, 0, O_LUA }, { "max-conns", 1, 0, O_MAXCONNS },
        { "backlog", 1, 0, O_BACKLOG }, { "max-header-bytes", 1, 0, O_MAXHEAD },
        { "max-headers", 1, 0, O_MAXHEADERS }, { "max-body-bytes", 1, 0, O_MAXBODY },
        { "max-queued-bytes", 1, 0, O_MAXQUEUED }, { "header-timeout", 1, 0, O_HEADERTO },
        { "keepalive-timeout", 1, 0, O_KATO }, { "send-timeout", 1, 0, O_SENDTO },
        { "heartbeat", 1, 0, O_HB },
        { "retry", 1, 0, O_RETRY }, { "history-len", 1, 0, O_HLEN },
        { "history-ttl", 1, 0, O_HTTL }, { "max-history-bytes", 1, 0, O_HBYTES },
        { "lua-cpu-budget", 1, 0, O_CPU },
        { "lua-memory", 1, 0, O_MEM }, { "no-watch", 0, 0, O_NOWATCH },
        { "reload-debounce", 1, 0, O_DEBOUNCE }, { "shutdown-grace", 1, 0, O_GRACE },
        { "pid-file", 1, 0, O_PID }, { "log-level", 1, 0, O_LOG },
        { "log-format", 1, 0, O_LOGFMT }, { "access-log", 1, 0, O_ACCESS },
        { "check", 1, 0, O_CHECK }, { "version", 0, 0, O_VERSION },
        { "help", 0, 0, O_HELP }, { "workers", 1, 0, O_WORKERS },
        { "reuseport", 0, 0, O_REUSEPORT }, { "max-streams", 1, 0, O_MAXSTREAMS },
        { "shed-queued-bytes", 1, 0, O_SHEDQUEUED }, { "quota-keys", 1, 0, O_QUOTAKEYS },
        { "admin-listen", 1, 0, O_ADMIN }, { "no-histograms", 0, 0, O_NOHIST },
        { "redis", 1, 0, O_REDIS }, { "redis-prefix", 1, 0, O_REDIS_PREFIX },
        { 0, 0, 0, 0 },
    };
    int o;
    double v;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
#define NUM(name, lo, hi) if (parse_num(name, optarg, lo, hi, &v) < 0) return 2
        switch (o) {
        case O_LISTEN: cfg.listen = optarg; break;
        case O_APPS: cfg.apps_dir = optarg; break;
        case O_LUA: cfg.lua_dir = optarg; break;
        case O_MAXCONNS: NUM("--max-conns", 1, 1 << 24); cfg.max_conns = (int)v; break;
        case O_BACKLOG: NUM("--backlog", 1, 1 << 20); cfg.backlog = (int)v; break;
        case O_MAXHEAD: NUM("--max-header-bytes", 256, 1 << 24); cfg.max_head = (size_t)v; break;
        case O_MAXHEADERS: NUM("--max-headers", 1, 10000); cfg.max_headers = (size_t)v; break;
        case O_MAXBODY: NUM("--max-body-bytes", 0, 1u << 30); cfg.max_body = (size_t)v; break;
        case O_MAXQUEUED: NUM("--max-queued-bytes", 4096, 1u << 30); cfg.max_queued = (size_t)v; break;
        case O_HEADERTO: NUM("--header-timeout", 0.01, 3600); cfg.header_timeout = v; break;
        case O_KATO: NUM("--keepalive-timeout", 0.01, 86400); cfg.keepalive_timeout = v; break;
        case O_SENDTO: NUM("--send-timeout", 0.01, 86400); cfg.send_timeout = v; break;
        case O_HB:
            NUM("--heartbeat", 0, 86400);
            if (v > 0 && v < 0.1) {
                fprintf(stderr, "sluice: --heartbeat is 0 (off) or at least 0.1 s\n");
                return 2;
            }
            cfg.heartbeat = v;
            break;
        case O_RETRY: NUM("--retry", -1, 86400000); cfg.retry_ms = (long)v; break;
        case O_HLEN: NUM("--history-len", 0, 10000000); cfg.history_len = (size_t)v; break;
        case O_HTTL: NUM("--history-ttl", 0.001, 1e9); cfg.history_ttl = v; break;
        case O_HBYTES:
            NUM("--max-history-bytes", 0, 1e15);
            cfg.history_bytes = (size_t)v;
            break;
        case O_CPU: NUM("--lua-cpu-budget", 0, 3600000); cfg.lua_cpu_ms = (int)v; break;
        case O_MEM: NUM("--lua-memory", 0, 1 << 20); cfg.lua_mem = (size_t)v << 20; break;
        case O_NOWATCH: cfg.watch = false; break;
        case O_DEBOUNCE: NUM("--reload-debounce", 0, 60); cfg.reload_debounce = v; break;
        case O_GRACE: NUM("--shutdown-grace", 0, 3600); cfg.shutdown_grace = v; break;
        case O_PID: cfg.pid_file = optarg; break;
        case O_WORKERS: NUM("--workers", 1, 1024); cfg.workers = (unsigned)v; break;
        case O_REUSEPORT: cfg.reuseport = true; break;
        case O_MAXSTREAMS: NUM("--max-streams", 0, 1 << 24); cfg.max_streams = (unsigned)v; break;
        case O_SHEDQUEUED:
            NUM("--shed-queued-bytes", 0, 1e15);
            cfg.shed_queued_bytes = (size_t)v;
            break;
        case O_QUOTAKEYS: NUM("--quota-keys", 16, 1 << 26); cfg.quota_keys = (size_t)v; break;
        case O_REDIS: cfg.redis_url = optarg; break;
        case O_REDIS_PREFIX: cfg.redis_prefix = optarg; break;
        case O_LOG:
            if (log_parse_level(optarg, &log_threshold) < 0) {
                fprintf(stderr, "sluice: --log-level is debug, info, warn or error\n");
                return 2;
            }
            break;
        case O_LOGFMT:
            if (log_parse_format(optarg, &log_format) < 0) {
                fprintf(stderr, "sluice: --log-format is text or json\n");
                return 2;
            }
            break;
        case O_ACCESS: cfg.access_log = optarg; break;
        case O_ADMIN: cfg.admin_listen = optarg; break;
        case O_NOHIST: cfg.histograms = false; break;
        case O_CHECK: check_dir = optarg; break;
        case O_VERSION: puts("sluice 0.1.0"); return 0;
        case O_HELP: usage(stdout, &defaults); return 0;
        default: usage(stderr, &defaults); return 2;
        }
#undef NUM
    }
    if (optind < argc) {
        fprintf(stderr, "sluice: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr, &defaults);
        return 2;
    }
    if (reload_cmd)
        return send_reload(cfg.pid_file);
    /* Before any loop or thread exists, so that every thread inherits it. */
    if (signals_block() < 0)
        return 1;

    char *lua_dir = NULL;
    if (!cfg.lua_dir)
        cfg.lua_dir = lua_dir = default_lua_dir();
    if (check_dir) {
        int rc = check_apps(&cfg, check_dir);
        free(lua_dir);
        return rc;
    }

    if (!apps_dir_usable(cfg.apps_dir)) {
        free(lua_dir);
        return 1;
    }

    /* A client that vanishes mid-write must be an error code, not a kill. */
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        log_warn("cannot ignore SIGPIPE");
    int fds = raise_fd_limit();
    if (cfg.max_conns == 0)
        cfg.max_conns = fds > 128 ? fds - 64 : 64;

    if (cfg.access_log && access_log_open(cfg.access_log) < 0) {
        free(lua_dir);
        return 1;
    }

    /* From here SIGTERM works even if no loop ever turns again: loading
     * the apps or a handler may be stuck (see core/signals.h). */
    if (signals_start(cfg.shutdown_grace, cfg.pid_file) < 0) {
        free(lua_dir);
        return 1;
    }
    if (cfg.workers == 0)
        cfg.workers = cpus_available();
    quota_configure(cfg.quota_keys);
    struct process proc;
    int rc = 1;
    if (process_init(&proc, &cfg, cfg.workers) == 0)
        rc = process_run(&proc);
    /* Before the loop goes: the signal thread feeds it. */
    signals_stop();
    process_free(&proc);
    access_log_close();
    quota_free_all();
    free(lua_dir);
    log_info("sluice stopped");
    return rc;
}
