/* log: levelled log lines for every process, written to a pluggable sink.
 *
 * Contract: LOG_ERROR/WARN/INFO/DEBUG(fmt, ...) do not evaluate their
 * arguments when the level is filtered out.  Each line names the call, the
 * peer and the error (the caller's job); the default sink writes
 * "PROGRAM LEVEL message" with a UTC timestamp to stderr.  Thread safe:
 * whole lines from any thread, one at a time, through the sink (called under
 * the logger's lock; a sink must not log). */
#ifndef ITT_LOG_H
#define ITT_LOG_H

enum log_level {
	LOG_LEVEL_ERROR = 0,
	LOG_LEVEL_WARN = 1,
	LOG_LEVEL_INFO = 2,
	LOG_LEVEL_DEBUG = 3,
};

typedef void (*log_sink_fn)(int level, const char *line, void *ud);

extern _Atomic int log_level_now;

/* The program name in stderr lines (default "itt"); a static string. */
void log_set_program(const char *name);
/* NULL restores the stderr sink. */
void log_set_sink(log_sink_fn fn, void *ud);
void log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* "error", "warn", "info", "debug" (or 0..3); -1 when unknown. */
int log_parse_level(const char *s);
const char *log_level_name(int level);

#define LOG_AT(lvl, ...)                                                                           \
	do {                                                                                       \
		if ((lvl) <= log_level_now)                                                        \
			log_write((lvl), __VA_ARGS__);                                             \
	} while (0)
#define LOG_ERROR(...) LOG_AT(LOG_LEVEL_ERROR, __VA_ARGS__)
#define LOG_WARN(...)  LOG_AT(LOG_LEVEL_WARN, __VA_ARGS__)
#define LOG_INFO(...)  LOG_AT(LOG_LEVEL_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) LOG_AT(LOG_LEVEL_DEBUG, __VA_ARGS__)

#endif
