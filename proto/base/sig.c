/* sig: see sig.h. */
#include "sig.h"

#include <string.h>

volatile sig_atomic_t sig_stop;

static void sig_on_stop(int sig)
{
	sig_stop = sig;
}

void sig_ignore_pipe(void)
{
	signal(SIGPIPE, SIG_IGN);
}

void sig_stop_install(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = sig_on_stop;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sig_ignore_pipe();
}
