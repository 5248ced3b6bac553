/* Watching the apps directory: a change to a script, debounced so that an
 * editor's save sequence is one reload, calls back the process, which
 * tells every worker to reload. Lives on the process's loop. */
#ifndef SLUICE_RELOAD_H
#define SLUICE_RELOAD_H

#include <ev.h>

struct reloader;

/* Watches dir (following it if it is a symbolic link) and the directory
 * that holds its name (a link swapped for another release). NULL if
 * watching is not possible (logged; SIGHUP still reloads). */
struct reloader *reloader_new(struct ev_loop *loop, const char *dir, double debounce,
                              void (*reload)(void *ctx), void *ctx);
/* Reloads now (SIGHUP): re-resolves dir first, so the watch follows a link
 * that now leads to another release, then calls reload(ctx). */
void reloader_reload(struct reloader *r);
void reloader_stop(struct reloader *r);
void reloader_free(struct reloader *r);

#endif
