/* sig: the one signal set-up of every itt process.
 *
 * sig_stop_install() makes SIGINT and SIGTERM store their number in
 * sig_stop (without SA_RESTART, so a blocking call returns EINTR and a loop
 * can look at it) and ignores SIGPIPE (a peer that closes a socket must not
 * kill a process).  Processes with an event loop of their own (libuv) watch
 * SIGINT/SIGTERM there and call sig_ignore_pipe() only. */
#ifndef ITT_SIG_H
#define ITT_SIG_H

#include <signal.h>

/* 0 until SIGINT or SIGTERM arrives, then that signal's number. */
extern volatile sig_atomic_t sig_stop;

void sig_stop_install(void);
void sig_ignore_pipe(void);

#endif
