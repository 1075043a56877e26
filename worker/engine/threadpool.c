/* threadpool: fork-join parallel-for over a fixed set of pthreads.
 *
 * A job is published by bumping `generation` under the mutex; workers wait
 * for a new generation (spinning a little first), run their share, and the
 * last one to finish signals the caller.  No allocation per job. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

/* About 50 us of pause on this CPU: long enough to bridge the gaps between
 * the jobs of one forward step, short enough not to steal a core from the
 * broker and clients between steps. */
#define SPIN_ITERS 2000

struct threadpool {
	int n;
	pthread_t *threads;
	pthread_mutex_t mu;
	pthread_cond_t work_cv, done_cv;
	atomic_uint generation;
	atomic_int pending;
	threadpool_fn fn;
	void *arg;
	atomic_int stop;
};

struct worker_arg {
	threadpool_t *pool;
	int ith;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

static void *worker_main(void *p)
{
	struct worker_arg *wa = p;
	threadpool_t *pool = wa->pool;
	int ith = wa->ith;
	unsigned seen = 0;
	free(wa);

	for (;;) {
		unsigned gen;
		int spins = 0;
		while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
		       spins < SPIN_ITERS) {
			cpu_relax();
			spins++;
		}
		if (gen == seen) {
			pthread_mutex_lock(&pool->mu);
			while ((gen = atomic_load(&pool->generation)) == seen && !pool->stop)
				pthread_cond_wait(&pool->work_cv, &pool->mu);
			pthread_mutex_unlock(&pool->mu);
		}
		if (pool->stop)
			return NULL;
		seen = gen;
		pool->fn(pool->arg, ith, pool->n);
		if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
			pthread_mutex_lock(&pool->mu);
			pthread_cond_signal(&pool->done_cv);
			pthread_mutex_unlock(&pool->mu);
		}
	}
}

int threadpool_new(int n_threads, threadpool_t **out, struct itt_err *err)
{
	if (n_threads < 1 || n_threads > 1024)
		return itt_err_set(err, ITT_E_INVALID, "threads %d out of range [1, 1024]", n_threads);
	threadpool_t *pool = calloc(1, sizeof *pool);
	if (!pool)
		return itt_err_set(err, ITT_E_NOMEM, "threadpool_new: out of memory");
	pool->n = n_threads;
	pthread_mutex_init(&pool->mu, NULL);
	pthread_cond_init(&pool->work_cv, NULL);
	pthread_cond_init(&pool->done_cv, NULL);
	pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
	if (!pool->threads) {
		threadpool_destroy(&pool);
		return itt_err_set(err, ITT_E_NOMEM, "threadpool_new: out of memory");
	}
	for (int i = 1; i < n_threads; i++) {
		struct worker_arg *wa = malloc(sizeof *wa);
		if (!wa || pthread_create(&pool->threads[i], NULL, worker_main,
					  (wa->pool = pool, wa->ith = i, wa)) != 0) {
			free(wa);
			pool->n = i; /* only the started ones are joined */
			threadpool_destroy(&pool);
			return itt_err_set(err, ITT_E_NOMEM, "pthread_create failed for thread %d", i);
		}
	}
	*out = pool;
	return 0;
}

void threadpool_destroy(threadpool_t **pp)
{
	threadpool_t *pool = pp ? *pp : NULL;
	if (!pool)
		return;
	pthread_mutex_lock(&pool->mu);
	pool->stop = 1;
	atomic_fetch_add(&pool->generation, 1);
	pthread_cond_broadcast(&pool->work_cv);
	pthread_mutex_unlock(&pool->mu);
	for (int i = 1; i < pool->n; i++)
		pthread_join(pool->threads[i], NULL);
	pthread_mutex_destroy(&pool->mu);
	pthread_cond_destroy(&pool->work_cv);
	pthread_cond_destroy(&pool->done_cv);
	free(pool->threads);
	free(pool);
	*pp = NULL;
}

int threadpool_size(const threadpool_t *pool)
{
	return pool->n;
}

void threadpool_run(threadpool_t *pool, threadpool_fn fn, void *arg)
{
	if (pool->n == 1) {
		fn(arg, 0, 1);
		return;
	}
	pool->fn = fn;
	pool->arg = arg;
	atomic_store(&pool->pending, pool->n - 1);
	pthread_mutex_lock(&pool->mu);
	atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
	pthread_cond_broadcast(&pool->work_cv);
	pthread_mutex_unlock(&pool->mu);

	fn(arg, 0, pool->n);

	int spins = 0;
	while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0 &&
	       spins < SPIN_ITERS) {
		cpu_relax();
		spins++;
	}
	if (atomic_load(&pool->pending) != 0) {
		pthread_mutex_lock(&pool->mu);
		while (atomic_load(&pool->pending) != 0)
			pthread_cond_wait(&pool->done_cv, &pool->mu);
		pthread_mutex_unlock(&pool->mu);
	}
}

void threadpool_split(size_t n, size_t align, int ith, int nth, size_t *lo, size_t *hi)
{
	if (align == 0)
		align = 1;
	size_t units = (n + align - 1) / align;
	size_t per = units / (size_t)nth, extra = units % (size_t)nth;
	size_t start = (size_t)ith * per + ((size_t)ith < extra ? (size_t)ith : extra);
	size_t count = per + ((size_t)ith < extra ? 1 : 0);
	*lo = start * align < n ? start * align : n;
	*hi = (start + count) * align < n ? (start + count) * align : n;
}
