/* cmd-cluster: the itt subcommands that talk to a cluster through libitt
 * (itt stats and itt settings are in cmd-stats.c):
 *   itt generate --broker ENDPOINT --model NAME ...   stream a generation
 *   itt up [--workers N] [--model FILE] ...            a broker, N workers and a
 *                                                      coordinator as children
 *
 * Contract: exit 0 on success; 1 when the cluster answered ERROR (printed as
 * "itt CMD: CODE: reason") or a child of `itt up` died; 2 on a usage error
 * or a request refused before it was sent.  Everything received is checked
 * by libitt; nothing a broker sends can crash these commands.
 *
 * `itt up` invariant: every child it started is signalled and reaped before
 * it returns (children also get SIGTERM from the kernel if `itt up` itself is
 * killed, through PR_SET_PDEATHSIG). */
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli.h"
#include "clock.h"
#include "libitt.h"
#include "log.h"
#include "sig.h"

#define UP_MAX_WORKERS 256
#define UP_MAX_EXTRA   32

/* --- generate --broker ------------------------------------------------------ */

/* Sets the sampling fields that differ from the defaults, so that absent
 * fields keep the broker's (and later a tenant's) defaults. */
static void fill_sampling(const struct gen_opts *o, struct itt_sampling *s)
{
	struct sampler_params d;
	const struct sampler_params *p = &o->sp;
	sampler_params_default(&d);
#define SET(field, src, bit)                                                                       \
	do {                                                                                       \
		if (p->src != d.src) {                                                             \
			s->field = p->src;                                                         \
			s->set |= bit;                                                             \
		}                                                                                  \
	} while (0)
	SET(temperature, temperature, ITT_SAMPLING_TEMPERATURE);
	SET(top_k, top_k, ITT_SAMPLING_TOP_K);
	SET(top_p, top_p, ITT_SAMPLING_TOP_P);
	SET(min_p, min_p, ITT_SAMPLING_MIN_P);
	SET(typical_p, typical_p, ITT_SAMPLING_TYPICAL_P);
	SET(repeat_penalty, repeat_penalty, ITT_SAMPLING_REPEAT_PENALTY);
	SET(repeat_last_n, penalty_last_n, ITT_SAMPLING_REPEAT_LAST_N);
	SET(presence_penalty, presence_penalty, ITT_SAMPLING_PRESENCE_PENALTY);
	SET(frequency_penalty, frequency_penalty, ITT_SAMPLING_FREQUENCY_PENALTY);
#undef SET
	if (o->seed_set) {
		s->seed = p->seed;
		s->set |= ITT_SAMPLING_SEED;
	}
}

/* A growable byte buffer for the generated text and ids. */
struct buf {
	char *p;
	size_t len, cap;
};

static int buf_add(struct buf *b, const void *data, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = 2 * b->cap + n + 64;
		char *p = realloc(b->p, cap);
		if (!p)
			return -1;
		b->p = p;
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = 0;
	return 0;
}

itt_client_t *open_client(const char *endpoint, const struct cluster_opts *co, const char *cmd)
{
	struct itt_client_options opt;
	struct itt_err err = {0};
	itt_client_options_default(&opt);
	opt.api_key = co->api_key ? co->api_key : getenv("ITT_API_KEY");
	opt.client_id = co->client_id;
	if (co->timeout_ms >= 0)
		opt.give_up_ms = (int)co->timeout_ms;
	itt_client_t *c = itt_client_new(endpoint, &opt, &err);
	if (!c)
		fprintf(stderr, "itt %s: %s: %s\n", cmd, itt_code_name(err.code), err.msg);
	return c;
}

int stream_next_or_cancel(itt_stream_t *s, struct itt_event *ev, struct stream_wait *w)
{
	for (;;) {
		if (sig_stop && !w->cancelled) {
			/* Ctrl-C: cancel, and give the broker a moment to confirm. */
			itt_stream_cancel(s);
			w->cancelled = true;
			w->t_cancel_ms = clock_mono_ms();
		}
		int r = itt_stream_next(s, ev, 200);
		if (r != 0)
			return r;
		if (w->cancelled && clock_mono_ms() - w->t_cancel_ms > 2000)
			return 0;
	}
}

/* The techniques of `itt generate --broker` (checked by the broker, which
 * knows the model): guidance when heads, a head set, a negative prompt or
 * a non-zero scale is given; speculative decoding with --speculative,
 * --draft or --exit-draft-layers (--draft defaults to 4); early exit with
 * --early-exit and --exit-layers.  Returns 0, or 2 after a usage error. */
struct broker_tech {
	struct itt_guidance g;
	struct itt_speculative sp;
	struct itt_early_exit ee;
	char *heads_buf;
	const char **heads;
	uint32_t layers[64];
};

static int broker_tech_fill(const struct gen_technique *t, struct broker_tech *bt,
                            struct itt_request *req)
{
	memset(bt, 0, sizeof *bt);
	if (t->heads || t->head_set || t->negative_prompt || t->scale != 0) {
		bt->g.scale = t->scale;
		bt->g.blend = t->blend;
		bt->g.head_set = t->head_set;
		bt->g.negative_prompt = t->negative_prompt;
		if (t->heads) {
			size_t n = 1;
			for (const char *c = t->heads; *c; c++)
				n += *c == ',';
			if (!(bt->heads_buf = strdup(t->heads)) ||
			    !(bt->heads = calloc(n, sizeof *bt->heads))) {
				fprintf(stderr, "itt generate: out of memory\n");
				return 2;
			}
			char *save = NULL;
			for (char *h = strtok_r(bt->heads_buf, ",", &save); h;
			     h = strtok_r(NULL, ",", &save))
				bt->heads[bt->g.n_heads++] = h;
			bt->g.heads = bt->heads;
		}
		req->guidance = &bt->g;
	}
	if (t->draft || t->max_draft >= 0 || t->exit_draft_layers) {
		bt->sp.draft = t->draft;
		bt->sp.max_draft = t->max_draft >= 0 ? (uint32_t)t->max_draft : 4;
		bt->sp.exit_layers = (uint32_t)t->exit_draft_layers;
		req->speculative = &bt->sp;
	}
	if (t->exit_threshold >= 0 || t->exit_layers) {
		if (t->exit_threshold < 0 || !t->exit_layers) {
			fprintf(stderr, "itt generate: --early-exit T needs --exit-layers L,... and "
			                "the other way round\n");
			return 2;
		}
		const char *c = t->exit_layers;
		size_t n = 0;
		while (*c) {
			char *end;
			errno = 0;
			unsigned long v = strtoul(c, &end, 10);
			if (end == c || errno || v > UINT32_MAX || (*end && *end != ',') ||
			    n == sizeof bt->layers / sizeof bt->layers[0]) {
				fprintf(stderr,
				        "itt generate: --exit-layers \"%s\": expected up to 64 layer "
				        "numbers separated by commas\n",
				        t->exit_layers);
				return 2;
			}
			bt->layers[n++] = (uint32_t)v;
			c = *end ? end + 1 : end;
		}
		bt->ee.threshold = t->exit_threshold;
		bt->ee.layers = bt->layers;
		bt->ee.n_layers = n;
		req->early_exit = &bt->ee;
	}
	return 0;
}

static void broker_tech_free(struct broker_tech *bt)
{
	free(bt->heads_buf);
	free(bt->heads);
}

int cmd_generate_broker(struct gen_opts *o)
{
	const struct cluster_opts *co = &o->co;
	struct itt_err err = {0};
	int rc = 1;

	struct itt_request req;
	struct itt_message *msgs = NULL;
	itt_request_init(&req);
	req.model = o->model;
	req.prompt = o->prompt;
	if (o->chat) {
		/* the conversation replaces the prompt */
		if (!(msgs = calloc(o->n_msgs ? o->n_msgs : 1, sizeof *msgs))) {
			fprintf(stderr, "itt generate: out of memory\n");
			return 1;
		}
		for (size_t i = 0; i < o->n_msgs; i++)
			msgs[i] = (struct itt_message){o->msgs[i].role, o->msgs[i].content};
		req.prompt = NULL;
		req.messages = msgs;
		req.n_messages = o->n_msgs;
		req.chat_template = o->chat_template;
	}
	req.max_tokens = o->n_predict;
	fill_sampling(o, &req.sampling);
	req.stop = o->stops;
	req.n_stop = (size_t)o->n_stops;
	req.deadline_ms = (uint32_t)co->deadline_ms;
	req.priority = (int32_t)co->priority;
	req.tenant = co->tenant;
	struct broker_tech bt;
	if (broker_tech_fill(&o->tech, &bt, &req)) {
		broker_tech_free(&bt);
		free(msgs);
		return 2;
	}

	itt_client_t *c = open_client(o->broker, co, "generate");
	if (!c) {
		broker_tech_free(&bt);
		free(msgs);
		return 2;
	}
	itt_stream_t *s = itt_submit(c, &req, &err);
	broker_tech_free(&bt);
	free(msgs);
	if (!s) {
		fprintf(stderr, "itt generate: %s: %s\n", itt_code_name(err.code), err.msg);
		itt_client_destroy(&c);
		return err.code == ITT__CODE__INVALID_ARGUMENT ? 2 : 1;
	}
	sig_stop_install();
	if (!o->json && !o->chat) {
		fputs(o->prompt, stdout);
		fflush(stdout);
	}
	struct buf text = {0}, ids = {0};
	struct stream_wait wait = {0};
	for (;;) {
		struct itt_event ev;
		int r = stream_next_or_cancel(s, &ev, &wait);
		if (r < 0)
			break;
		if (r == 0) {
			rc = 130;
			break;
		}
		if (ev.type == ITT_EVENT_CHUNK) {
			if (buf_add(&text, ev.text, ev.text_len) < 0 ||
			    buf_add(&ids, ev.tokens, ev.n_tokens * sizeof *ev.tokens) < 0) {
				fprintf(stderr, "itt generate: out of memory\n");
				break;
			}
			if (!o->json) {
				fwrite(ev.text, 1, ev.text_len, stdout);
				fflush(stdout);
			}
			continue;
		}
		if (ev.type == ITT_EVENT_ERROR) {
			if (!o->json)
				printf("\n");
			fprintf(stderr, "itt generate: %s: %s\n", itt_code_name(ev.code),
				ev.reason);
			rc = wait.cancelled ? 130 : 1;
			break;
		}
		/* DONE */
		size_t n_gen = ids.len / sizeof(int32_t);
		double gen_s = (ev.total_ms - ev.first_token_ms) / 1e3;
		double tok_s = n_gen > 1 && gen_s > 0 ? (double)(n_gen - 1) / gen_s : 0;
		if (o->json) {
			json_t *j = json_object(), *t = json_object();
			if (o->chat) {
				json_object_set_new(j, "messages", gen_json_messages(o));
			} else {
				json_object_set_new(j, "prompt", cli_json_str(o->prompt));
			}
			json_object_set_new(j, "prompt_tokens",
					    cli_json_ids(ev.prompt_tokens, ev.n_prompt_tokens));
			json_object_set_new(j, "tokens",
					    cli_json_ids((const int32_t *)ids.p, n_gen));
			json_object_set_new(j, "text",
					    cli_json_text(text.p ? text.p : "", text.len));
			json_object_set_new(j, "stop_reason", cli_json_str(ev.stop_reason));
			json_object_set_new(j, "seed", cli_json_u64(ev.seed));
			json_object_set_new(j, "model", cli_json_str(o->model));
			json_object_set_new(j, "request_id", cli_json_str(itt_stream_id(s)));
			json_object_set_new(j, "replays", json_integer(ev.replays));
			json_object_set_new(t, "queue_ms", cli_json_num(ev.queue_ms, "%.3f"));
			json_object_set_new(t, "first_token_ms",
					    cli_json_num(ev.first_token_ms, "%.3f"));
			json_object_set_new(t, "total_ms", cli_json_num(ev.total_ms, "%.3f"));
			json_object_set_new(t, "gen_tok_s", cli_json_num(tok_s, "%.2f"));
			json_object_set_new(j, "timings", t);
			cli_json_print(j, stdout);
		} else {
			printf("\n");
			fflush(stdout);
			fprintf(
			    stderr,
			    "[%zu prompt tokens, %zu generated in %.1f ms (first token %.1f ms, "
			    "%.1f tok/s), stop: %s, seed %llu, replays %u]\n",
			    ev.n_prompt_tokens, n_gen, ev.total_ms, ev.first_token_ms, tok_s,
			    ev.stop_reason, (unsigned long long)ev.seed, ev.replays);
		}
		rc = wait.cancelled ? 130 : 0;
		break;
	}
	fflush(stdout);
	free(text.p);
	free(ids.p);
	itt_stream_destroy(&s);
	itt_client_destroy(&c);
	return rc;
}

/* --- up --------------------------------------------------------------------- */

struct up_opts {
	const char *model, *name, *front, *back;
	long n_workers, threads, ready_ms, stages; /* stages 0: the coordinator's */
	int log_level;                             /* -1: the children's own */
	bool no_coordinator;
	const char *wargs[UP_MAX_EXTRA], *bargs[UP_MAX_EXTRA], *cargs[UP_MAX_EXTRA];
	int n_wargs, n_bargs, n_cargs;
};

static int up_extra(const char **list, int *n, const char *v, char *reason, size_t cap)
{
	if (*n == UP_MAX_EXTRA) {
		snprintf(reason, cap, "at most %d of these", UP_MAX_EXTRA);
		return -1;
	}
	list[(*n)++] = v;
	return 0;
}

static int up_worker_arg(void *out, const char *v, char *reason, size_t cap)
{
	struct up_opts *u = out;
	return up_extra(u->wargs, &u->n_wargs, v, reason, cap);
}

static int up_broker_arg(void *out, const char *v, char *reason, size_t cap)
{
	struct up_opts *u = out;
	return up_extra(u->bargs, &u->n_bargs, v, reason, cap);
}

static int up_coordinator_arg(void *out, const char *v, char *reason, size_t cap)
{
	struct up_opts *u = out;
	return up_extra(u->cargs, &u->n_cargs, v, reason, cap);
}

#define UP_AT(f) offsetof(struct up_opts, f)

static const struct opt up_opts_table[] = {
	{"model", 0, OPT_STR, NULL, 1, 4096, UP_AT(model), "FILE",
	 "GGUF model every worker loads (required)"},
	{"workers", 0, OPT_LONG, "1", 1, UP_MAX_WORKERS, UP_AT(n_workers), NULL,
	 "worker processes"},
	{"name", 0, OPT_STR, NULL, 1, 4096, UP_AT(name), "NAME",
	 "model name the workers serve (default: the worker's own)"},
	{"front", 0, OPT_STR, "tcp://*:5555", 1, 4096, UP_AT(front), "ENDPOINT",
	 "broker front end, for clients"},
	{"back", 0, OPT_STR, "tcp://*:5556", 1, 4096, UP_AT(back), "ENDPOINT",
	 "broker back end, for workers"},
	{"threads", 't', OPT_LONG, "1", 1, 256, UP_AT(threads), NULL,
	 "compute threads per worker"},
	{"ready-timeout-ms", 0, OPT_LONG, "60000", 100, 3600000, UP_AT(ready_ms), "MS",
	 "give up when the workers have not registered"},
	{"worker-arg", 0, OPT_FN, NULL, 0, 0, 0, "ARG", "pass ARG to every worker (repeatable)",
	 up_worker_arg},
	{"broker-arg", 0, OPT_FN, NULL, 0, 0, 0, "ARG", "pass ARG to the broker (repeatable)",
	 up_broker_arg},
	{"no-coordinator", 0, OPT_FLAG, NULL, 0, 0, UP_AT(no_coordinator), NULL,
	 "start no itt-coordinator (the broker forms routes itself)"},
	{"stages", 0, OPT_LONG, NULL, 1, UP_MAX_WORKERS, UP_AT(stages), NULL,
	 "N pipeline stages, passed to the coordinator (default: its own)"},
	{"coordinator-arg", 0, OPT_FN, NULL, 0, 0, 0, "ARG",
	 "pass ARG to the coordinator (repeatable)", up_coordinator_arg},
	{"log-level", 0, OPT_LEVEL, NULL, 0, 0, UP_AT(log_level), NULL,
	 "error, warn, info or debug, for every child (default: theirs)"},
};

static const struct opt_spec up_spec = {
	.prog = "itt up",
	.usage = "--model FILE [options]",
	.about = "\n"
		 "Starts itt-broker, N itt-worker processes and itt-coordinator (all found\n"
		 "beside this itt executable; the coordinator only when it is there) as\n"
		 "children, prints the endpoints, and a line \"itt up: ready: ...\" once all N\n"
		 "workers have registered with the broker (and the coordinator has connected, or\n"
		 "5 s more have passed; the line says which). Ctrl-C or SIGTERM stops them all\n"
		 "(exit 0). When a child dies unexpectedly it is reported, the others are\n"
		 "stopped, and itt up exits 1.",
	.opts = up_opts_table,
	.n_opts = OPTS_N(up_opts_table),
};

struct child {
	pid_t pid;
	char name[32];
	bool alive;
};

/* The bind forms "tcp://<any>:5556" and "tcp://0.0.0.0:5556" as a local peer
 * would connect to them. */
static void connect_form(const char *bind_ep, char *out, size_t cap)
{
	const char *hosts[] = {"tcp://*:", "tcp://0.0.0.0:"};
	for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++) {
		size_t n = strlen(hosts[i]);
		if (!strncmp(bind_ep, hosts[i], n)) {
			snprintf(out, cap, "tcp://127.0.0.1:%s", bind_ep + n);
			return;
		}
	}
	snprintf(out, cap, "%s", bind_ep);
}

/* A child's argv: its binary, options with their values, --log-level, the
 * extra arguments given to itt up, NULL. */
struct child_argv {
	char *v[16 + UP_MAX_EXTRA];
	int n;
};

/* Adds "name value", unless value is NULL. */
static void arg_opt(struct child_argv *a, const char *name, const char *value)
{
	if (value) {
		a->v[a->n++] = (char *)name;
		a->v[a->n++] = (char *)value;
	}
}

static void arg_tail(struct child_argv *a, const char *log_level, const char *const *extra,
		     int n_extra)
{
	arg_opt(a, "--log-level", log_level);
	for (int i = 0; i < n_extra; i++)
		a->v[a->n++] = (char *)extra[i];
	a->v[a->n] = NULL;
}

static pid_t spawn(char *const *argv)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	/* Child: its own process group (Ctrl-C reaches only itt up, which
	 * stops the children in order), and SIGTERM should itt up vanish. */
	setpgid(0, 0);
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	if (getppid() != parent)
		_exit(127);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	execv(argv[0], argv);
	fprintf(stderr, "itt up: cannot run %s: %s\n", argv[0], strerror(errno));
	_exit(127);
}

/* Starts argv as child *c named name; -1 (after saying why) when fork fails. */
static int start_child(struct child *c, char *const *argv, const char *name)
{
	c->pid = spawn(argv);
	c->alive = c->pid > 0;
	snprintf(c->name, sizeof c->name, "%s", name);
	if (c->pid < 0) {
		fprintf(stderr, "itt up: fork: %s\n", strerror(errno));
		return -1;
	}
	return 0;
}

static void describe_exit(const struct child *ch, int status)
{
	if (WIFSIGNALED(status))
		fprintf(stderr, "itt up: %s (pid %d) was killed by signal %d (%s)\n", ch->name,
			(int)ch->pid, WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		fprintf(stderr, "itt up: %s (pid %d) exited with status %d\n", ch->name,
			(int)ch->pid, WEXITSTATUS(status));
}

/* Reaps exited children; returns the number that had not been expected to
 * exit (all exits count as unexpected unless `stopping`). */
static int reap(struct child *ch, int n, bool stopping)
{
	int died = 0, status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		for (int i = 0; i < n; i++)
			if (ch[i].pid == pid && ch[i].alive) {
				ch[i].alive = false;
				if (!stopping) {
					describe_exit(&ch[i], status);
					died++;
				}
			}
	}
	return died;
}

/* SIGTERM to every live child, SIGKILL after 5 s; reaps them all. */
static void stop_children(struct child *ch, int n)
{
	/* Workers first, then the broker (child 0), so that workers say BYE. */
	for (int i = n - 1; i >= 0; i--)
		if (ch[i].alive)
			kill(ch[i].pid, SIGTERM);
	uint64_t t0 = clock_mono_ms();
	bool killed = false;
	for (;;) {
		reap(ch, n, true);
		int left = 0;
		for (int i = 0; i < n; i++)
			left += ch[i].alive;
		if (!left)
			return;
		if (!killed && clock_mono_ms() - t0 > 5000) {
			for (int i = 0; i < n; i++)
				if (ch[i].alive) {
					fprintf(stderr,
						"itt up: %s (pid %d) ignored SIGTERM; killing it\n",
						ch[i].name, (int)ch[i].pid);
					kill(ch[i].pid, SIGKILL);
				}
			killed = true;
		}
		sleep_ms(20);
	}
}

/* Workers registered at the broker (state other than "lost", model name
 * matching when given), or -1 when the broker did not answer; *coord: the
 * broker reports a coordinator connected. */
static int count_ready(itt_client_t *c, const char *name, bool *coord)
{
	Itt__ClusterStats *st = NULL;
	if (itt_stats(c, &st, 500, NULL))
		return -1;
	*coord = st->coordinator;
	int n = 0;
	for (size_t i = 0; i < st->n_workers; i++) {
		const Itt__WorkerStats *w = st->workers[i];
		if (w->state && !strcmp(w->state, "lost"))
			continue;
		if (name && (!w->model || strcmp(w->model, name)))
			continue;
		n++;
	}
	itt_stats_free(&st);
	return n;
}

int cmd_up(int argc, char **argv)
{
	struct up_opts u = {.log_level = -1};
	int prc = opts_parse(&up_spec, argc, argv, &u, NULL);
	if (prc != OPTS_OK)
		return cli_exit(prc);
	const char *model = u.model, *name = u.name, *front = u.front, *back = u.back;
	const char *log_level = u.log_level >= 0 ? log_level_name(u.log_level) : NULL;
	long n_workers = u.n_workers, stages = u.stages, ready_ms = u.ready_ms;
	bool coordinator = !u.no_coordinator;
	if (!model) {
		fprintf(stderr, "itt up: --model FILE is required (see --help)\n");
		return 2;
	}
	if (!coordinator && (stages || u.n_cargs)) {
		fprintf(stderr, "itt up: --stages and --coordinator-arg need the coordinator; "
				"drop --no-coordinator\n");
		return 2;
	}
	if (access(model, R_OK) != 0) {
		fprintf(stderr, "itt up: cannot read %s: %s\n", model, strerror(errno));
		return 1;
	}

	/* The broker and worker binaries live beside this executable. */
	char self[PATH_MAX], dir[PATH_MAX], broker_bin[PATH_MAX + 16], worker_bin[PATH_MAX + 16],
	    coord_bin[PATH_MAX + 16];
	ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
	if (sl <= 0) {
		fprintf(stderr, "itt up: cannot find my own executable: %s\n", strerror(errno));
		return 1;
	}
	self[sl] = 0;
	snprintf(dir, sizeof dir, "%s", self);
	char *d = dirname(dir);
	snprintf(broker_bin, sizeof broker_bin, "%s/itt-broker", d);
	snprintf(worker_bin, sizeof worker_bin, "%s/itt-worker", d);
	snprintf(coord_bin, sizeof coord_bin, "%s/itt-coordinator", d);
	if (access(broker_bin, X_OK) || access(worker_bin, X_OK)) {
		fprintf(stderr, "itt up: %s and %s must be built beside itt\n", broker_bin,
			worker_bin);
		return 1;
	}
	if (coordinator && access(coord_bin, X_OK)) {
		if (stages || u.n_cargs) {
			fprintf(stderr, "itt up: --stages and --coordinator-arg need %s, which is "
					"not built\n", coord_bin);
			return 1;
		}
		printf("itt up: no %s; running without a coordinator\n", coord_bin);
		coordinator = false;
	}
	char back_conn[512], front_conn[512], threads_s[16], stages_s[16];
	connect_form(back, back_conn, sizeof back_conn);
	connect_form(front, front_conn, sizeof front_conn);
	snprintf(threads_s, sizeof threads_s, "%ld", u.threads);
	snprintf(stages_s, sizeof stages_s, "%ld", stages);

	/* Signals are caught before the first child exists, so that a stop
	 * request can never leave one behind. */
	sig_stop_install();
	struct child ch[2 + UP_MAX_WORKERS];
	int n_ch = 0, rc = 0;
	struct child_argv a = {{broker_bin}, 1};
	arg_opt(&a, "--front", front);
	arg_opt(&a, "--back", back);
	arg_tail(&a, log_level, u.bargs, u.n_bargs);
	if (start_child(&ch[0], a.v, "itt-broker") < 0)
		return 1;
	n_ch = 1;
	printf("itt up: broker pid %d, front end %s (clients connect to %s), back end %s\n",
	       (int)ch[0].pid, front, front_conn, back);
	for (long w = 0; w < n_workers; w++) {
		a = (struct child_argv){{worker_bin}, 1};
		arg_opt(&a, "--broker", back_conn);
		arg_opt(&a, "--model", model);
		arg_opt(&a, "--threads", threads_s);
		arg_opt(&a, "--name", name);
		arg_tail(&a, log_level, u.wargs, u.n_wargs);
		char cname[32];
		snprintf(cname, sizeof cname, "itt-worker %ld", w + 1);
		if (start_child(&ch[n_ch], a.v, cname) < 0) {
			rc = 1;
			goto out;
		}
		printf("itt up: worker %ld pid %d, model %s\n", w + 1, (int)ch[n_ch++].pid, model);
	}
	/* The coordinator last: it is stopped first (stop_children goes
	 * backwards), so it does not react to the workers leaving. */
	if (coordinator) {
		a = (struct child_argv){{coord_bin}, 1};
		arg_opt(&a, "--broker", back_conn);
		arg_opt(&a, "--stages", stages ? stages_s : NULL);
		arg_tail(&a, log_level, u.cargs, u.n_cargs);
		struct child *c = &ch[n_ch];
		if (start_child(c, a.v, "itt-coordinator") < 0) {
			rc = 1;
			goto out;
		}
		n_ch++;
		printf("itt up: coordinator pid %d, broker %s%s%s\n", (int)c->pid, back_conn,
		       stages ? ", stages " : "", stages ? stages_s : "");
	}
	fflush(stdout);

	/* Poll STATS until all workers have registered. */
	struct cluster_opts co = {.timeout_ms = 0};
	itt_client_t *cl = open_client(front_conn, &co, "up");
	if (!cl) {
		rc = 1;
		goto out;
	}
	uint64_t t0 = clock_mono_ms(), t_workers = 0;
	int ready = 0;
	bool coord_up = false;
	while (!sig_stop) {
		if (reap(ch, n_ch, false)) {
			rc = 1;
			break;
		}
		ready = count_ready(cl, name, &coord_up);
		if (ready >= n_workers) {
			/* then up to 5 s more for the coordinator to connect */
			if (!t_workers)
				t_workers = clock_mono_ms();
			if (!coordinator || coord_up || clock_mono_ms() - t_workers > 5000)
				break;
			sleep_ms(100);
			continue;
		}
		if (clock_mono_ms() - t0 > (uint64_t)ready_ms) {
			fprintf(stderr, "itt up: only %d of %ld workers registered within %ld ms\n",
				ready < 0 ? 0 : ready, n_workers, ready_ms);
			rc = 1;
			break;
		}
		sleep_ms(100);
	}
	itt_client_destroy(&cl);
	if (rc || sig_stop)
		goto out;
	printf("itt up: ready: %ld worker%s registered%s; clients connect to %s\n", n_workers,
	       n_workers == 1 ? "" : "s",
	       !coordinator ? ""
	       : coord_up   ? "; coordinator connected"
			    : "; coordinator not connected (yet)",
	       front_conn);
	fflush(stdout);

	while (!sig_stop) {
		if (reap(ch, n_ch, false)) {
			rc = 1;
			break;
		}
		sleep_ms(100);
	}
out:
	if (sig_stop)
		printf("itt up: %s: stopping\n", strsignal((int)sig_stop));
	else if (rc)
		printf("itt up: stopping the remaining processes\n");
	fflush(stdout);
	stop_children(ch, n_ch);
	printf("itt up: stopped\n");
	fflush(stdout);
	return rc;
}
