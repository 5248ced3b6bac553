#include "config.h"

void config_defaults(struct config *c)
{
    *c = (struct config){
        .listen = "127.0.0.1:8080",
        .apps_dir = "apps",
        .lua_dir = NULL,                 /* next to the binary: ./lua */
        .max_conns = 0,                  /* 0: from the open-files limit */
        .backlog = 4096,
        .max_head = 16 * 1024,
        .max_headers = 100,
        .max_body = 1024 * 1024,
        .max_queued = 1024 * 1024,
        .header_timeout = 10,
        .keepalive_timeout = 60,
        .send_timeout = 60,
        .heartbeat = 15,
        .retry_ms = 3000,
        .shutdown_grace = 5,
        .lua_cpu_ms = 100,
        .lua_mem = 512u * 1024 * 1024,
        .history_len = 1000,
        .history_ttl = 600,
        .history_bytes = 256u * 1024 * 1024,
        .reload_debounce = 0.1,
        .watch = true,
        .histograms = true,
        .pid_file = NULL,
        .max_streams = 0,
        .shed_queued_bytes = 0,
        .quota_keys = 100000,
        .redis_url = NULL,
        .redis_prefix = "sluice:",
    };
}
