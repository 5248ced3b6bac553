/* The handler a worker wires into its transport: requests to the Lua
 * runtime, streams' ends to the channels and the runtime. */
#ifndef SLUICE_DISPATCH_H
#define SLUICE_DISPATCH_H

struct conn_handler;
extern const struct conn_handler worker_handler;

#endif
