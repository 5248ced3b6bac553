/* Every limit and default, with the command-line name beside it. */
#ifndef SLUICE_CONFIG_H
#define SLUICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

struct config {
    const char *listen;          /* --listen HOST:PORT */
    const char *apps_dir;        /* --apps DIR */
    const char *lua_dir;         /* --lua-path DIR: the sluice Lua library */
    int max_conns;               /* --max-conns */
    int backlog;                 /* --backlog */
    size_t max_head;             /* --max-header-bytes */
    size_t max_headers;          /* --max-headers */
    size_t max_body;             /* --max-body-bytes */
    size_t max_queued;           /* --max-queued-bytes: per connection */
    double header_timeout;       /* --header-timeout (s) */
    double keepalive_timeout;    /* --keepalive-timeout (s) */
    double send_timeout;         /* --send-timeout (s): a client not reading */
    double heartbeat;            /* --heartbeat (s), streams' default */
    long retry_ms;               /* --retry (ms), sent when a stream opens */
    double shutdown_grace;       /* --shutdown-grace (s) */
    int lua_cpu_ms;              /* --lua-cpu-budget (ms, 0 = off) */
    size_t lua_mem;              /* --lua-memory (bytes, 0 = off) */
    size_t history_len;          /* --history-len: events per channel */
    double history_ttl;          /* --history-ttl (s) */
    size_t history_bytes;        /* --max-history-bytes: all channels together */
    double reload_debounce;      /* --reload-debounce (s) */
    bool watch;                  /* --no-watch turns it off */
    const char *pid_file;        /* --pid-file */
    unsigned workers;            /* --workers: threads serving (0: the CPUs we may use) */
    bool reuseport;              /* --reuseport: a listening socket per worker */
    const char *access_log;      /* --access-log FILE, "-" = stdout; NULL = off */
    unsigned max_streams;        /* --max-streams: open streams of the process past
                                    which new ones get 503 (0 = no limit) */
    size_t shed_queued_bytes;    /* --shed-queued-bytes: queued output of the process
                                    past which new streams get 503 (0 = no limit) */
    size_t quota_keys;           /* --quota-keys: entries of the quota table */
    const char *admin_listen;    /* --admin-listen HOST:PORT; NULL = off */
    bool histograms;             /* --no-histograms turns them off */
    const char *redis_url;       /* --redis URL: cluster mode; NULL = one node */
    const char *redis_prefix;    /* --redis-prefix P: every key and channel */
};

void config_defaults(struct config *c);

#endif
