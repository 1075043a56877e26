/* clock: the project's time helpers.
 *
 * Intervals, timeouts and deadlines are measured on CLOCK_MONOTONIC (never
 * steps backwards when the wall clock is set); only times shown to people or
 * sent as "time of day" fields use the wall clock (CLOCK_REALTIME).  A timed
 * wait on a condition variable uses clock_cv_init() and clock_deadline(),
 * both on the monotonic clock. */
#ifndef ITT_CLOCK_H
#define ITT_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Monotonic time since an arbitrary origin. */
uint64_t clock_mono_ms(void);
uint64_t clock_mono_us(void);
/* Monotonic seconds as a double (for measuring durations). */
double clock_mono_s(void);

/* Wall-clock time since the Unix epoch (for display and time-of-day fields). */
uint64_t clock_wall_ms(void);

/* Initialises a condition variable whose timed waits use CLOCK_MONOTONIC;
 * 0 or an errno value. */
int clock_cv_init(pthread_cond_t *cv);

/* The absolute CLOCK_MONOTONIC time `ms` from now, for pthread_cond_timedwait
 * on a variable made by clock_cv_init(). */
struct timespec clock_deadline(uint64_t ms);

#endif
