/* threadpool: a fixed set of threads that run one parallel-for at a time.
 *
 * threadpool_run(pool, fn, arg) calls fn(arg, i, n) once for every i in
 * [0, n) where n = threadpool_size(pool), the caller's thread taking i = 0,
 * and returns when all calls have returned.  Workers spin briefly after a
 * job (decode issues a job every few tens of microseconds) and then sleep on
 * a condition variable.  One caller at a time. */
#ifndef ITT_THREADPOOL_H
#define ITT_THREADPOOL_H

#include "err.h"

typedef struct threadpool threadpool_t;
typedef void (*threadpool_fn)(void *arg, int ith, int nth);

int threadpool_new(int n_threads, threadpool_t **out, struct itt_err *err);
void threadpool_destroy(threadpool_t **pool);
int threadpool_size(const threadpool_t *pool);
void threadpool_run(threadpool_t *pool, threadpool_fn fn, void *arg);

/* Splits [0, n) into nth nearly equal parts, aligned to align; part ith is
 * [*lo, *hi). */
void threadpool_split(size_t n, size_t align, int ith, int nth, size_t *lo, size_t *hi);

#endif
