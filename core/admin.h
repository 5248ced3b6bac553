/* The admin listener (--admin-listen HOST:PORT, off by default): a
 * socket of its own on the process's main loop, never a worker's, so
 * probes answer while the workers are flooded, and nothing here touches a
 * worker's Lua state. It serves
 *   /healthz         200 while the process's loop runs
 *   /readyz          200 once every worker has loaded the apps and while
 *                    not draining; 503 otherwise
 *   /metrics         the Prometheus text format (core/metrics.h)
 *   /status          a self-contained HTML page following /status/events
 *   /status/events   the status figures as SSE, once a second
 * One request per connection (Connection: close), GET or HEAD. */
#ifndef SLUICE_ADMIN_H
#define SLUICE_ADMIN_H

struct process;
struct admin;

/* Listens on spec; NULL (logged) when it cannot. */
struct admin *admin_start(struct process *p, const char *spec);

/* Closes the listener and every admin connection. NULL: nothing. */
void admin_free(struct admin *a);

#endif
