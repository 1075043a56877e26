/* scheduler: the worker's compute thread (see scheduler.h for the
 * contract): its life cycle, the commands it applies between two steps, the
 * live changes (SETTINGS, ASSIGN), and the stats and log summaries.
 *
 * The thread waits on the inbox (a condition variable on the monotonic
 * clock), applies every queued command (CLOSE frees blocks before the step
 * runs), waits up to batch_wait_us for sessions whose next STEP is due (the
 * gather window), runs one step (sched-step.c), publishes its counters and
 * wakes the loop.  The pieces share sched-internal.h: decoders in
 * sched-msg.c, sessions and admission in sched-session.c.
 * Invariants: only this thread touches the engine and the sessions; the
 * loop reads only the outbox and the stats, under out_mu; s->e is NULL only
 * after an ASSIGN could reload no range (then sched_broken). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "itt.pb-c.h"
#include "log.h"
#include "sched-internal.h"

/* Least time between two "busy" summary lines. */
#define SCHED_SUMMARY_MS 60000u

static void sched_log_summary(sched_t *s, const char *when);
static void sched_apply_settings(sched_t *s, const struct sched_cmd *c);
static void sched_apply_assign(sched_t *s, const struct sched_cmd *c);

/* INFO lines for a session with techniques when it ends: speculative
 * acceptance, and where early exit decided its tokens. */
static void sched_log_spec(const sched_t *s, const struct sched_session *ss)
{
	if (ss && ss->tech.ee && ss->ee_count) {
		char line[512];
		size_t at = 0;
		uint64_t total = 0;
		for (uint32_t l = 0; l < s->info.n_layers; l++) {
			total += ss->ee_count[l];
			if (ss->ee_count[l] && at < sizeof line)
				at += (size_t)snprintf(line + at, sizeof line - at, " %u:%u", l,
				                       ss->ee_count[l]);
		}
		if (total)
			LOG_INFO("session %llu: early exit: %llu tokens decided after layer "
			         "(layer:tokens)%s",
			         (unsigned long long)ss->id, (unsigned long long)total,
			         at ? line : "");
	}
	if (!ss || !ss->tech.spec || !ss->spec_steps)
		return;
	LOG_INFO("session %llu: speculative (%s): %llu drafts proposed, %llu accepted (%.1f%%) "
	         "over %llu steps",
	         (unsigned long long)ss->id, ss->tech.spec_exit ? "exit" : "ngram",
	         (unsigned long long)ss->spec_proposed, (unsigned long long)ss->spec_accepted,
	         ss->spec_proposed ? 100.0 * (double)ss->spec_accepted / (double)ss->spec_proposed
	                           : 0.0,
	         (unsigned long long)ss->spec_steps);
}

static void sched_apply(sched_t *s, struct sched_cmd *c)
{
	if (!s->e && c->kind != SCHED_CMD_CLOSE && c->kind != SCHED_CMD_RESET) {
		if (c->kind == SCHED_CMD_OPEN || c->kind == SCHED_CMD_STEP)
			sched_error(s, c->session_id, ITT__CODE__UNAVAILABLE, "no layers loaded");
		return;
	}
	switch (c->kind) {
	case SCHED_CMD_OPEN: sched_apply_open(s, c); break;
	case SCHED_CMD_STEP: sched_apply_step(s, c); break;
	case SCHED_CMD_CLOSE:
		LOG_DEBUG("session %llu closed", (unsigned long long)c->session_id);
		sched_log_spec(s, sched_find(s, c->session_id, NULL));
		sched_drop(s, c->session_id);
		if (s->n_sess == 0)
			sched_log_summary(s, "idle");
		break;
	case SCHED_CMD_RESET:
		if (s->n_sess)
			LOG_INFO("registration %u: dropping %u sessions", c->epoch, s->n_sess);
		while (s->n_sess)
			sched_drop(s, s->sess[0]->id);
		s->epoch = c->epoch;
		break;
	case SCHED_CMD_SETTINGS: sched_apply_settings(s, c); break;
	case SCHED_CMD_ASSIGN: sched_apply_assign(s, c); break;
	}
}

/* One INFO line with the prefix index and preemption counters, when they
 * changed since the last one (logged when the worker becomes idle, at most
 * once a minute while busy, and at exit). */
static void sched_log_summary(sched_t *s, const char *when)
{
	if (!s->e)
		return;
	const struct kv_cache *kv = &s->e->kv;
	if (s->spec_proposed != s->logged_proposed) {
		s->logged_proposed = s->spec_proposed;
		LOG_INFO("speculative (%s): %llu drafts proposed, %llu accepted (%.1f%%) since "
		         "start",
		         when, (unsigned long long)s->spec_proposed,
		         (unsigned long long)s->spec_accepted,
		         100.0 * (double)s->spec_accepted / (double)s->spec_proposed);
	}
	if (kv->stats.lookups == s->logged_lookups && s->preemptions == s->logged_preemptions)
		return;
	s->logged_ms = clock_mono_ms();
	s->logged_lookups = kv->stats.lookups;
	s->logged_preemptions = s->preemptions;
	LOG_INFO("kv (%s): prefix index %llu lookups, %llu hits, %llu blocks shared, %llu "
	         "inserted, %llu evicted, %u indexed (%u idle); %llu preemptions; %u of %u "
	         "blocks free",
	         when, (unsigned long long)kv->stats.lookups, (unsigned long long)kv->stats.hits,
	         (unsigned long long)kv->stats.hit_blocks, (unsigned long long)kv->stats.inserted,
	         (unsigned long long)kv->stats.evicted, kv->n_indexed, kv->n_idle,
	         (unsigned long long)s->preemptions, kv->n_free, kv->n_blocks);
}

static bool sched_has_work(const sched_t *s)
{
	uint32_t matched;
	for (uint32_t i = 0; i < s->n_sess; i++)
		if (s->sess[i]->running && s->sess[i]->n_done < s->sess[i]->n_hist)
			return true;
	return s->n_wait > 0 && sched_head_fits(s, true, &matched);
}

/* A session whose result went out this recently will most likely send its
 * next STEP within microseconds (the broker answers at once). */
#define SCHED_EXPECT_US 50000u

/* Running sessions with nothing to feed whose next STEP is expected soon. */
static uint32_t sched_expected(const sched_t *s, uint64_t now_us)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < s->n_sess; i++) {
		const struct sched_session *ss = s->sess[i];
		n += ss->running && ss->n_done == ss->n_hist && ss->last_out_us > 0 &&
		     now_us - ss->last_out_us < SCHED_EXPECT_US;
	}
	return n;
}

static void sched_apply_all(sched_t *s, struct sched_cmd *cmds)
{
	while (cmds) {
		struct sched_cmd *c = cmds;
		cmds = c->next;
		sched_apply(s, c);
		sched_cmd_free(&c);
	}
}

/* The gather window.  Results of one step go out together and the broker
 * answers each with the next STEP within tens of microseconds; running the
 * next step as soon as the first STEP arrives would split the sessions into
 * a 1-row step and an (n-1)-row step that stream the weights twice, and keep
 * them split.  So when some sessions are ready and others are expected,
 * wait up to batch_wait_us for the expected ones. */
static void sched_gather(sched_t *s)
{
	if (!s->cfg.batch_wait_us)
		return;
	uint64_t deadline = clock_mono_us() + s->cfg.batch_wait_us;
	for (;;) {
		uint64_t now = clock_mono_us();
		if (now >= deadline || !sched_expected(s, now))
			return;
		/* clock_deadline counts whole ms; the window is in us */
		uint64_t left = deadline - now;
		struct timespec ts = clock_deadline(left / 1000u);
		ts.tv_nsec += (long)(left % 1000u) * 1000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&s->in_mu);
		while (!s->stop && !s->in_head &&
		       pthread_cond_timedwait(&s->in_cv, &s->in_mu, &ts) == 0)
			;
		struct sched_cmd *cmds = s->in_head;
		s->in_head = s->in_tail = NULL;
		bool stop = s->stop;
		pthread_mutex_unlock(&s->in_mu);
		sched_apply_all(s, cmds);
		if (stop)
			return;
	}
}

/* Copies the counters the loop reads (telemetry) under the outbox lock;
 * returns whether outputs were queued since the last call. */
static bool sched_publish(sched_t *s)
{
	pthread_mutex_lock(&s->out_mu);
	bool fresh = s->out_new;
	s->out_new = false;
	s->stats.sessions = s->n_sess;
	s->stats.waiting = s->n_wait;
	s->stats.preemptions = s->preemptions;
	s->stats.spec_proposed = s->spec_proposed;
	s->stats.spec_accepted = s->spec_accepted;
	s->stats.settings = (struct sched_settings){
	    s->e ? (uint32_t)threadpool_size(s->e->pool) : 0, s->cfg.batch_tokens, s->cfg.slow_ms};
	if (s->e) {
		const struct kv_cache *kv = &s->e->kv;
		s->stats.kv_blocks = kv->n_blocks;
		s->stats.kv_free = kv->n_free;
		s->stats.kv_idle = kv->n_idle;
		s->stats.prefix_lookups = kv->stats.lookups;
		s->stats.prefix_hits = kv->stats.hits;
		s->stats.prefix_blocks = kv->stats.hit_blocks;
	}
	pthread_mutex_unlock(&s->out_mu);
	return fresh;
}

static void *sched_main(void *arg)
{
	sched_t *s = arg;
	s->logged_ms = clock_mono_ms();
	for (;;) {
		pthread_mutex_lock(&s->in_mu);
		while (!s->stop && !s->in_head && !sched_has_work(s))
			pthread_cond_wait(&s->in_cv, &s->in_mu);
		if (s->stop) {
			pthread_mutex_unlock(&s->in_mu);
			break;
		}
		struct sched_cmd *cmds = s->in_head;
		s->in_head = s->in_tail = NULL;
		pthread_mutex_unlock(&s->in_mu);

		/* Commands first: CLOSE frees blocks before this step runs. */
		sched_apply_all(s, cmds);
		sched_gather(s);
		sched_run_step(s);
		if (clock_mono_ms() - s->logged_ms >= SCHED_SUMMARY_MS)
			sched_log_summary(s, "busy");

		bool fresh = sched_publish(s);
		if (fresh && s->notify)
			s->notify(s->notify_arg);
	}
	sched_log_summary(s, "exit");
	while (s->n_sess)
		sched_drop(s, s->sess[0]->id);
	return NULL;
}

/* ---- live changes and life cycle ---------------------------------------- */

/* Bytes of every tensor of the file: the weights of the whole model. */
static uint64_t sched_file_weight_bytes(const gguf_t *g)
{
	uint64_t sum = 0;
	for (uint64_t i = 0; i < gguf_n_tensors(g); i++)
		sum += gguf_tensor_at(g, i)->size;
	return sum;
}

/* Opens the engine for layers [first, last) (last 0: all) with threads
 * compute threads, and sets info and the buffers that depend on the range.
 * On error s->e is NULL. */
static int sched_load(sched_t *s, uint32_t first, uint32_t last, int threads, struct itt_err *err)
{
	struct engine_config ec;
	engine_config_default(&ec);
	ec.path = s->cfg.model_path;
	ec.first = first;
	ec.last = last;
	ec.n_threads = threads > 0 ? threads : 1;
	ec.max_rows = s->max_rows;
	ec.kv_bytes = s->cfg.kv_bytes;
	ec.kv_type = s->cfg.kv_type;
	ec.act_quant = !s->cfg.act_quant_off;
	s->block = ec.kv_block;
	int rc = engine_open(&ec, &s->e, err);
	if (rc < 0)
		return rc;
	const struct model *m = s->e->model;
	s->info.vocab = m->hp.vocab;
	s->info.ctx_len = m->hp.ctx_len;
	s->info.dim = m->hp.dim;
	s->info.n_layers = m->hp.n_layers;
	s->info.n_heads = m->hp.n_heads;
	s->info.first = m->first;
	s->info.last = m->last;
	s->info.tok = s->e->tok;
	s->info.eos = s->e->tok ? tokenizer_eos(s->e->tok) : -1;
	s->info.bos = s->e->tok ? tokenizer_bos(s->e->tok) : -1;
	s->info.n_eog = 0;
	if (s->e->tok) {
		int32_t all[SCHED_MAX_EOG + 1];
		size_t n = tokenizer_eog_ids(s->e->tok, all, SCHED_MAX_EOG + 1);
		if (n > SCHED_MAX_EOG + 1)
			n = SCHED_MAX_EOG + 1;
		for (size_t i = 0; i < n && s->info.n_eog < SCHED_MAX_EOG; i++)
			if (all[i] != s->info.eos)
				s->info.eog[s->info.n_eog++] = all[i];
		if (tokenizer_eog_ids(s->e->tok, NULL, 0) > SCHED_MAX_EOG + 1)
			LOG_WARN("the vocabulary has more than %d end-of-generation tokens; "
			         "the broker stops at the first %d", SCHED_MAX_EOG + 1, SCHED_MAX_EOG);
	}
	struct itt_err cerr = {0};
	if (s->cfg.chat_template &&
	    chat_template_by_name(s->cfg.chat_template, &s->info.chat, &cerr) == 0)
		LOG_INFO("chat template: %s (--chat-template)", chat_template_name(&s->info.chat));
	else if (chat_template_from_gguf(m->file, &s->info.chat, &cerr) < 0)
		LOG_WARN("%s: tokenizer.chat_template: %s; chat needs a named template",
		         s->cfg.model_path, cerr.msg);
	else if (s->e->tok && m->first == 0)
		LOG_INFO("chat template: %s%s", chat_template_name(&s->info.chat),
		         s->info.chat.fallback ? " (the model has none: the fallback)"
		         : s->info.chat.family == CHAT_UNKNOWN
		             ? " (not recognised: chat requests must name a template)"
		             : "");
	s->info.kv_blocks = s->e->kv.n_blocks;
	s->info.kv_block = s->e->kv.block_size;
	s->info.weight_bytes = sched_file_weight_bytes(m->file);
	s->stage = m->first != 0 || m->last != m->hp.n_layers;
	s->cfg.prefix_cache = s->prefix_cache && !s->stage;
	if (m->first > 0 && !s->row_hid &&
	    !(s->row_hid = malloc((size_t)s->max_rows * m->hp.dim * sizeof *s->row_hid))) {
		engine_close(&s->e);
		return itt_err_set(err, ITT_E_NOMEM, "sched: no memory for %u hidden rows",
		                   s->max_rows);
	}
	return 0;
}

static void sched_apply_settings(sched_t *s, const struct sched_cmd *c)
{
	struct itt_err err = {0};
	int threads = threadpool_size(s->e->pool);
	if (c->has_threads && (int)c->set.threads != threads) {
		if (engine_set_threads(s->e, (int)c->set.threads, &err) < 0)
			LOG_ERROR("settings: threads %u: %s; keeping %d", c->set.threads, err.msg,
			          threads);
		else
			LOG_INFO("settings: threads %d -> %u", threads, c->set.threads);
	}
	if (c->has_batch_tokens && c->set.batch_tokens != s->cfg.batch_tokens) {
		LOG_INFO("settings: batch_tokens %u -> %u", s->cfg.batch_tokens,
		         c->set.batch_tokens);
		s->cfg.batch_tokens = c->set.batch_tokens;
	}
	if (c->has_slow_ms && c->set.slow_ms != s->cfg.slow_ms) {
		LOG_INFO("settings: slow_ms %u -> %u", s->cfg.slow_ms, c->set.slow_ms);
		s->cfg.slow_ms = c->set.slow_ms;
	}
	sched_publish(s);
}

/* Drops every session, reopens the engine with the assigned range (the old
 * one when that fails) and reports with SCHED_OUT_LOADED. */
static void sched_apply_assign(sched_t *s, const struct sched_cmd *c)
{
	struct itt_err err = {0}, err2 = {0};
	uint32_t old_first = s->info.first, old_last = s->info.last;
	int threads = threadpool_size(s->e->pool);
	struct sched_out *o = calloc(1, sizeof *o);

	if (s->n_sess)
		LOG_INFO("assign: dropping %u sessions", s->n_sess);
	while (s->n_sess)
		sched_drop(s, s->sess[0]->id);
	s->epoch = c->epoch;
	LOG_INFO("assign: loading layers [%u, %u) (holding [%u, %u))", c->first, c->last, old_first,
	         old_last);
	uint64_t t0 = clock_mono_ms();
	engine_close(&s->e);
	int rc = sched_load(s, c->first, c->last, threads, &err);
	if (rc < 0) {
		LOG_ERROR("assign: cannot load layers [%u, %u): %s; reloading [%u, %u)", c->first,
		          c->last, err.msg, old_first, old_last);
		if (sched_load(s, old_first, old_last, threads, &err2) < 0) {
			LOG_ERROR("assign: cannot reload layers [%u, %u) either: %s", old_first,
			          old_last, err2.msg);
			pthread_mutex_lock(&s->out_mu);
			s->broken = true;
			pthread_mutex_unlock(&s->out_mu);
		}
	} else {
		LOG_INFO("assign: layers [%u, %u) loaded in %.0f ms, %u kv blocks", s->info.first,
		         s->info.last, (double)(clock_mono_ms() - t0), s->info.kv_blocks);
	}
	sched_publish(s);
	if (!o) {
		LOG_ERROR("assign: out of memory for the LOADED report");
		return;
	}
	o->kind = SCHED_OUT_LOADED;
	o->loaded = rc == 0;
	o->info = s->info;
	if (s->broken)
		o->info.tok = NULL;
	if (rc < 0)
		snprintf(o->err.msg, sizeof o->err.msg, "%s", err.msg);
	sched_push_out(s, o);
}

int sched_new(const struct sched_config *c, sched_t **out, struct itt_err *err)
{
	int rc;
	sched_t *s = calloc(1, sizeof *s);

	*out = NULL;
	if (!s)
		return itt_err_set(err, ITT_E_NOMEM, "sched_new: out of memory");
	s->cfg = *c;
	s->prefix_cache = c->prefix_cache;
	s->max_rows = c->max_batch_tokens ? c->max_batch_tokens : c->batch_tokens;
	if (!s->cfg.max_sessions || !s->cfg.batch_tokens || s->cfg.batch_tokens > s->max_rows) {
		free(s);
		return itt_err_set(err, ITT_E_INVALID,
		                   "sched_new: max_sessions and batch_tokens must be at least 1, "
		                   "batch_tokens at most max_batch_tokens");
	}
	pthread_mutex_init(&s->in_mu, NULL);
	clock_cv_init(&s->in_cv);
	pthread_mutex_init(&s->out_mu, NULL);
	if ((rc = sched_load(s, c->first, c->last, c->threads, err)) < 0)
		goto fail;
	size_t R = s->max_rows, S = c->max_sessions;
	s->sess = calloc(S, sizeof *s->sess);
	s->waitq = calloc(S, sizeof *s->waitq);
	s->row_tok = malloc(R * sizeof *s->row_tok);
	s->row_pos = malloc(R * sizeof *s->row_pos);
	s->row_seq = malloc(R * sizeof *s->row_seq);
	s->row_want = malloc(R);
	s->row_sess = malloc(R * sizeof *s->row_sess);
	s->row_br = malloc(R);
	s->row_grp = malloc(R * sizeof *s->row_grp);
	s->row_pert = malloc(R * sizeof *s->row_pert);
	s->row_exit = malloc(R * sizeof *s->row_exit);
	s->grp_sess = malloc(S * sizeof *s->grp_sess);
	s->grp_rows = malloc(S * sizeof *s->grp_rows);
	s->grp_brows = malloc(S * sizeof *s->grp_brows);
	if (!s->sess || !s->waitq || !s->row_tok || !s->row_pos || !s->row_seq || !s->row_want ||
	    !s->row_sess || !s->row_br || !s->row_grp || !s->row_pert || !s->row_exit ||
	    !s->grp_sess || !s->grp_rows || !s->grp_brows) {
		rc = itt_err_set(err, ITT_E_NOMEM, "sched_new: out of memory for %zu sessions", S);
		goto fail;
	}
	sched_publish(s);
	*out = s;
	return 0;
fail:
	sched_destroy(&s);
	return rc;
}

const struct sched_info *sched_get_info(const sched_t *s)
{
	return &s->info;
}

int sched_start(sched_t *s, void (*notify)(void *arg), void *arg, struct itt_err *err)
{
	s->notify = notify;
	s->notify_arg = arg;
	int rc = pthread_create(&s->thread, NULL, sched_main, s);
	if (rc)
		return itt_err_set(err, ITT_E_NOMEM, "pthread_create: %s", strerror(rc));
	pthread_setname_np(s->thread, "itt-compute");
	s->started = true;
	return 0;
}

void sched_push(sched_t *s, struct sched_cmd *c)
{
	c->next = NULL;
	pthread_mutex_lock(&s->in_mu);
	if (s->in_tail)
		s->in_tail->next = c;
	else
		s->in_head = c;
	s->in_tail = c;
	pthread_cond_signal(&s->in_cv);
	pthread_mutex_unlock(&s->in_mu);
}

struct sched_out *sched_take(sched_t *s)
{
	pthread_mutex_lock(&s->out_mu);
	struct sched_out *o = s->out_head;
	s->out_head = s->out_tail = NULL;
	pthread_mutex_unlock(&s->out_mu);
	return o;
}

void sched_get_stats(sched_t *s, struct sched_stats *st)
{
	pthread_mutex_lock(&s->out_mu);
	*st = s->stats;
	pthread_mutex_unlock(&s->out_mu);
}

bool sched_broken(sched_t *s)
{
	pthread_mutex_lock(&s->out_mu);
	bool b = s->broken;
	pthread_mutex_unlock(&s->out_mu);
	return b;
}

void sched_stop(sched_t *s)
{
	if (!s || !s->started)
		return;
	pthread_mutex_lock(&s->in_mu);
	s->stop = true;
	pthread_cond_signal(&s->in_cv);
	pthread_mutex_unlock(&s->in_mu);
	pthread_join(s->thread, NULL);
	s->started = false;
}

void sched_destroy(sched_t **sp)
{
	sched_t *s = sp ? *sp : NULL;
	if (!s)
		return;
	sched_stop(s);
	if (s->e)
		while (s->n_sess)
			sched_drop(s, s->sess[0]->id);
	for (struct sched_cmd *c = s->in_head; c;) {
		struct sched_cmd *next = c->next;
		sched_cmd_free(&c);
		c = next;
	}
	sched_out_free_list(s->out_head);
	engine_close(&s->e);
	free(s->sess);
	free(s->waitq);
	free(s->row_tok);
	free(s->row_pos);
	free(s->row_seq);
	free(s->row_want);
	free(s->row_sess);
	free(s->row_br);
	free(s->row_grp);
	free(s->row_pert);
	free(s->row_exit);
	free(s->row_hid);
	free(s->grp_sess);
	free(s->grp_rows);
	free(s->grp_brows);
	pthread_mutex_destroy(&s->in_mu);
	pthread_cond_destroy(&s->in_cv);
	pthread_mutex_destroy(&s->out_mu);
	free(s);
	*sp = NULL;
}
