/* log: see log.h. */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

_Atomic int log_level_now = LOG_LEVEL_INFO;

static const char *const log_names[] = {"error", "warn", "info", "debug"};

static const char *log_program = "itt";

void log_set_program(const char *name)
{
	log_program = name;
}

static void log_stderr(int level, const char *line, void *ud)
{
	struct timespec ts;
	struct tm tm;
	char when[32];
	(void)ud;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
	fprintf(stderr, "%s.%03ldZ %s %s %s\n", when, ts.tv_nsec / 1000000L, log_program,
	        log_level_name(level), line);
}

/* One lock orders whole lines from every thread and guards the sink. */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static log_sink_fn log_sink = log_stderr;
static void *log_sink_ud;

void log_set_sink(log_sink_fn fn, void *ud)
{
	pthread_mutex_lock(&log_mu);
	log_sink = fn ? fn : log_stderr;
	log_sink_ud = ud;
	pthread_mutex_unlock(&log_mu);
}

void log_write(int level, const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&log_mu);
	log_sink(level, line, log_sink_ud);
	pthread_mutex_unlock(&log_mu);
}

int log_parse_level(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (!strcmp(s, log_names[i]) || (s[0] == '0' + i && !s[1]))
			return i;
	return -1;
}

const char *log_level_name(int level)
{
	return level >= 0 && level < 4 ? log_names[level] : "?";
}
