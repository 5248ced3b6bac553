/* Process signals, received by one thread instead of an event loop, so
 * that SIGTERM ends the process even when a loop is stuck. The thread
 * feeds them to the process's loop (core/process.c), which tells the
 * workers; no worker thread ever receives them. */
#ifndef SLUICE_SIGNALS_H
#define SLUICE_SIGNALS_H

/* Blocks SIGTERM, SIGINT, SIGHUP and SIGUSR1 in the calling thread; threads created
 * afterwards inherit it. Call first in main, before any loop or thread. */
int signals_block(void);

/* Starts the thread that waits for those signals and feeds each to the
 * loop that has an ev_signal watcher for it (ev_feed_signal): the
 * process's default loop. After SIGTERM
 * or SIGINT it also arms a hard deadline: if the process is still running
 * grace + SIGNALS_EXIT_MARGIN seconds later, it logs one line, removes
 * pid_file (may be NULL) and exits with status 1 at once. */
int signals_start(double grace, const char *pid_file);

/* Call once the process loop's signal watchers are started, in the main
 * thread and before any worker thread exists (they inherit its mask):
 * blocks the signals again (starting a watcher may have unblocked them) and
 * feeds the loop the signals that arrived before it had watchers. */
void signals_loop_ready(void);

/* Stops the thread (the process is exiting normally): before the loop it
 * feeds is destroyed. */
void signals_stop(void);

#define SIGNALS_EXIT_MARGIN 1.0

#endif
