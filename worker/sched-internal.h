/* sched-internal: what the scheduler's pieces share (private to worker/).
 *
 * The scheduler (scheduler.h is its public contract) is split by job:
 *   sched-msg.c      message bodies -> commands (loop thread; pure functions)
 *   sched-session.c  the session table, admission, prefix sharing,
 *                    preemption, and OPEN/STEP applied to a session
 *   sched-step.c     one step: batch building, the forward pass, sampling,
 *                    drafts, results
 *   scheduler.c      the compute thread: life cycle, command handling,
 *                    live changes, stats
 *
 * Threads: the decoders run on the loop thread and only read the model's
 * shape and its (immutable) tokenizer.  The inbox and the outbox are the only
 * state both threads touch, each under its own mutex (in_mu, out_mu).
 * Everything else here (engine, sessions, round-robin cursor, epoch, row
 * buffers) belongs to the compute thread; every function declared below
 * runs on it. */
#ifndef ITT_SCHED_INTERNAL_H
#define ITT_SCHED_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine.h"
#include "scheduler.h"

/* A queued step: its result is due once hist[0, end) is in the cache; it
 * fed hist[start, end); the rows of its last n_logits positions want logits
 * (1; a speculative step's every row: [t, drafts...]). */
struct sched_mark {
	uint32_t step;
	uint32_t end;
	uint32_t start;
	uint32_t n_logits;
};

struct sched_session {
	uint64_t id;
	int32_t priority;     /* SessionOpen.priority: higher is served first, preempted last */
	uint64_t ticket;      /* arrival order; a preempted session keeps its ticket */
	uint64_t admitted;    /* admission order (victims: the latest admitted first) */
	bool running;         /* admitted, holds KV blocks; else in the wait queue */
	uint32_t preempted;   /* times it lost its blocks */
	uint64_t last_out_us; /* when its last result was queued (gather window), monotonic */
	struct kv_seq seq;
	sampler_t *smp;
	int32_t *hist; /* [cap] every token fed, prompt first */
	uint32_t n_hist, cap;
	uint32_t n_done;   /* hist[0, n_done) are in the cache (== seq.n_pos) */
	uint32_t n_prompt; /* prompt part of hist */
	bool tokenized;    /* the prompt came as text: step 0 reports it */
	int32_t stop_tokens[CHAT_MAX_STOP]; /* a conversation's end-of-turn ids (step 0) */
	uint32_t n_stop_tokens;
	uint64_t *keys;    /* [n_keys] prefix-index chain keys of the full prompt blocks */
	uint32_t n_keys;
	uint32_t n_reg; /* prompt blocks entered into the prefix index */
	struct sched_mark marks[SCHED_MAX_INFLIGHT]; /* ring, oldest at head */
	uint32_t mark_head, n_marks;
	/* Stages.  A stage > 0 keeps the input rows of positions [hid_start,
	 * n_hist) (hid_start <= n_done: rows already computed are dropped when
	 * new ones come); a non-last stage collects the output rows of
	 * positions [out_start, n_done), out_start being the start of the
	 * oldest step it owes. */
	float *hid; /* [hid_cap][dim] */
	uint32_t hid_start, hid_cap;
	float *outr; /* [out_cap][dim] */
	uint32_t out_start, out_cap;
	int reply_dtype; /* ITT__DTYPE__* of its RESULT rows */
	/* Techniques.  buffered: the logits of the head mark's rows are kept
	 * in lg (and the branch's in blg) until the mark completes. */
	struct sched_tech tech;
	bool buffered;
	float *lg, *blg;                      /* [SPEC_MAX_DRAFT + 1 or 1][vocab] */
	uint32_t lg_exit[SPEC_MAX_DRAFT + 1]; /* early exit: where each row stopped */
	struct spec_ctl ctl;                  /* speculative: adaptive draft length */
	uint64_t spec_proposed, spec_accepted, spec_steps;
	uint32_t *ee_count; /* early exit: [n_layers] tokens decided after each layer */
	/* guidance branch (g_kind 1: perturbed heads, 2: negative prompt) */
	int g_kind;
	struct forward_perturb pert;
	struct kv_seq bseq;
	int32_t off;      /* branch position = main position + off */
	uint32_t bn_done; /* branch positions in its cache (== bseq.n_pos) */
	float *bhid;      /* stage > 0: branch input rows, as hid */
	float *boutr;     /* non-last stage: branch output rows, as outr */
	uint32_t bhid_cap, bout_cap;
};

struct sched {
	struct sched_config cfg;
	struct sched_info info;
	struct engine *e;  /* NULL only when broken */
	uint32_t block;    /* KV positions per block */
	uint32_t max_rows; /* rows per step at most (max_batch_tokens) */
	bool stage;        /* a partial range: no prefix sharing, no preemption */
	bool prefix_cache; /* as configured (cfg.prefix_cache: in force, off on a stage) */
	bool broken;       /* an ASSIGN left no engine (written under out_mu) */

	/* compute thread only */
	struct sched_session **sess; /* [max_sessions], first n_sess used */
	uint32_t n_sess;
	struct sched_session **waitq; /* [max_sessions] by (priority desc, ticket asc) */
	uint32_t n_wait;
	uint64_t next_ticket, next_admit;
	uint32_t rr; /* round-robin start */
	uint32_t epoch;
	int32_t *row_tok;                            /* [max_rows] */
	uint32_t *row_pos;                           /* [max_rows] */
	struct kv_seq **row_seq;                     /* [max_rows] */
	uint8_t *row_want;                           /* [max_rows] */
	struct sched_session **row_sess;             /* [max_rows] session of each row */
	uint8_t *row_br;                             /* [max_rows] a guidance branch row */
	uint32_t *row_grp;                           /* [max_rows] its group */
	const struct forward_perturb **row_pert;     /* [max_rows] */
	uint32_t *row_exit;                          /* [max_rows] early exit: where it stopped */
	float *row_hid;                              /* [max_rows][dim] input rows (stage > 0) */
	struct sched_session **grp_sess;             /* [max_sessions] sessions in this batch */
	uint32_t *grp_rows;                          /* [max_sessions] their main row counts */
	uint32_t *grp_brows;                         /* [max_sessions] their branch row counts */
	struct sched_session *pass_exit;             /* the pass's early-exit owner (or NULL) */
	uint64_t spec_proposed, spec_accepted;       /* since start */
	uint64_t preemptions;                        /* since start */
	uint64_t logged_proposed;                    /* spec_proposed at the last summary */
	uint64_t logged_preemptions, logged_lookups; /* at the last summary line */
	uint64_t logged_ms;                          /* its time (monotonic) */

	/* inbox: loop -> compute */
	pthread_mutex_t in_mu;
	pthread_cond_t in_cv;
	struct sched_cmd *in_head, *in_tail;
	bool stop;

	/* outbox: compute -> loop, and stats */
	pthread_mutex_t out_mu;
	struct sched_out *out_head, *out_tail;
	struct sched_stats stats;
	bool out_new; /* outputs queued since the last notify */

	pthread_t thread;
	bool started;
	void (*notify)(void *arg);
	void *notify_arg;
};

/* ---- sessions (sched-session.c) ------------------------------------------ */

/* Positions of a session's guidance branch (0: none). */
uint32_t sched_bn_len(const struct sched_session *ss);
struct sched_session *sched_find(sched_t *s, uint64_t id, uint32_t *index);
/* Frees a session and removes it from the table (and the wait queue). */
void sched_drop(sched_t *s, uint64_t id);
/* Grows a [*cap][dim] row buffer to hold `need` rows; -1 when out of memory. */
int sched_rows_fit(float **rows, uint32_t *cap, uint32_t need, uint32_t dim);
/* Makes room for `need` tokens of history (at most ctx + 1); -1 when it cannot. */
int sched_hist_reserve(sched_t *s, struct sched_session *ss, uint32_t need);
/* Drops a session's positions >= pos (history, caches, kept stage rows). */
int sched_truncate(sched_t *s, struct sched_session *ss, uint32_t pos);
/* Queues an output (stamped with the epoch) for the loop. */
void sched_push_out(sched_t *s, struct sched_out *o);
/* Queues an ERROR for session id. */
void sched_error(sched_t *s, uint64_t id, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Whether the head of the wait queue can be admitted now (no side effect). */
bool sched_head_fits(const sched_t *s, bool may_defer, uint32_t *matched);
/* Admits waiting sessions in queue order while they fit. */
void sched_admit(sched_t *s, bool may_defer);
/* The running session to preempt first (NULL: none runs). */
struct sched_session *sched_victim(sched_t *s);
/* Frees v's blocks and puts it back in the wait queue. */
void sched_preempt(sched_t *s, struct sched_session *v, const struct sched_session *for_ss);

/* OPEN and STEP: a new session, or a step appended to one (ERROR on failure). */
void sched_apply_open(sched_t *s, struct sched_cmd *c);
void sched_apply_step(sched_t *s, struct sched_cmd *c);

/* ---- the step (sched-step.c) ---------------------------------------------- */

/* One step: admission, a batch over the running sessions with pending
 * tokens, then results. */
void sched_run_step(sched_t *s);

#endif
