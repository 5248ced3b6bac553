/* The handler a worker wires into its transport: requests to the Lua
 * runtime, streams' ends to the channels and the runtime. */
#ifndef SLUICE_DISPATCH_H
#define SLUICE_DISPATCH_H

struct conn;
struct conn_handler;
extern const struct conn_handler worker_handler;

/* Gives back the route quota slot c holds, if any (the handler's state
 * kept on the connection: core/quota.h). */
void conn_release_quota(struct conn *c);

#endif
