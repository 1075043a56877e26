/* broker: shared state of itt-broker, the data-plane hub of PROTOCOL.md.
 *
 * One thread runs one zmq_poll loop over two ROUTER sockets: the front end
 * (clients) and the back end (workers), plus a 10 ms tick for deadlines,
 * heartbeats and expiry.  The modules:
 *   config.c   the flag table (defaults, bounds, --help, --print-config);
 *   front.c    client commands (SUBMIT, CANCEL, HEARTBEAT, STATS), client
 *              liveness, sends to clients;
 *   back.c     worker commands (HELLO, HEARTBEAT, RESULT, ERROR, BYE),
 *              worker registry and expiry, sends to workers;
 *   request.c  the life of one request: queue, OPEN, each STEP driven
 *              through its route's stages, stop conditions, chunks,
 *              replay, DONE/ERROR, idempotent resend;
 *   route.c    routes: published by the coordinator, or formed from the
 *              workers' layer ranges; the least loaded is picked;
 *   control.c  telemetry, settings and pins, decisions, the coordinator;
 *   broker.c   the state: set-up, sockets, teardown, clock, reaping, and
 *              broker_check (the invariants below, with ITT_CHECKS);
 *   main.c     loop, tick, signals (the only file not in itt_broker_core).
 *
 * Ownership: the broker owns models, workers, clients and requests.  A
 * request is in `requests` from SUBMIT until it has been ended for
 * keep_ended_ms; in `sessions` and `deadlines` only while open (queued or
 * running).  A running request is on the session list of each worker of
 * its route (one struct stage each); an open request is on exactly one
 * client's list.
 *
 * Failure rule: a send that fails (EHOSTUNREACH: peer gone; EAGAIN: its
 * queue is full) marks the peer for reaping and never recurses; reaping runs
 * after the message being handled (broker_reap), so handlers never see a
 * peer vanish under them.
 *
 * Checks: built with ITT_CHECKS (Debug, sanitizer builds, the unit tests),
 * broker_check() walks every structure after each handled message and tick
 * and aborts on a broken invariant.  Only internal invariants are asserted:
 * input from the network is checked, logged and refused, never asserted. */
#ifndef ITT_BROKER_H
#define ITT_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "err.h"
#include "heap.h"
#include "list.h"
#include "map.h"
#include "validate.h"
#include "wire.h"

/* BROKER_ASSERT: an internal invariant (never a property of input). */
#if ITT_CHECKS
#define BROKER_ASSERT(cond) \
	((cond) ? (void)0 : broker_assert_fail(#cond, __FILE__, __LINE__, __func__))
#define BROKER_CHECK(b) broker_check(b)
#else
#define BROKER_ASSERT(cond) ((void)0)
#define BROKER_CHECK(b)     ((void)0)
#endif

#define BROKER_TICK_MS       10
#define BROKER_MAX_PIECE     1024 /* bytes of text one RESULT may carry */
#define BROKER_MAX_API_KEYS  64
#define BROKER_FRONT_MAXMSG  (1 << 20)
#define BROKER_BACK_MAXMSG   (64 << 20)
#define BROKER_FRONT_HWM     10000
#define BROKER_BACK_HWM      100000
#define BROKER_HANDSHAKE_MS  2000
#define BROKER_ZMTP_HB_MS    1000
#define BROKER_ZMTP_HB_TO_MS 3000
#define BROKER_MAX_STAGES    16  /* stages of one route */
#define BROKER_MAX_ROUTES    64  /* published routes per model */
#define BROKER_DECISIONS     256 /* decisions kept */
#define BROKER_STATS_DECISIONS 32 /* decisions in STATS_REPLY */
#define BROKER_MAX_DIM       (1u << 20)
#define BROKER_MAX_STOP_TOKENS 4 /* end-of-turn ids a RESULT may report */
#define BROKER_MAX_EOG       16  /* end-of-generation ids besides eos a HELLO may give */

/* Knobs (PROTOCOL.md "Telemetry, settings, placement"), as bits for pins. */
enum knob {
	KNOB_THREADS = 1,
	KNOB_BATCH_TOKENS = 2,
	KNOB_SLOW_MS = 4,
};

struct broker_config {
	char front[256];
	char back[256];
	int heartbeat_ms;
	int liveness;
	int queue_limit;
	int client_timeout_ms;
	int client_heartbeat_ms;
	int max_sessions_per_worker; /* 0: as the worker says */
	int max_replays;
	int keep_ended_ms;
	int keep_ended;
	int log_level;
	int act_f16; /* non-last stages reply with F16 activations */
	char head_sets[256]; /* folder of NAME.heads files ("" = none) */
	const char *api_keys[BROKER_MAX_API_KEYS];
	int n_api_keys;
};

/* 0: run; 1: exit 0 (--help, --print-config); 2: usage error (printed). */
int broker_config_parse(struct broker_config *c, int argc, char **argv);

struct model {
	char *name;
	uint32_t vocab, ctx_len;
	int32_t eos;
	int32_t eog[BROKER_MAX_EOG]; /* other tokens that end generation, ascending */
	uint32_t n_eog;
	struct link workers; /* struct worker.model_link */
	uint32_t n_workers;
	struct heap queue; /* waiting requests: replays first, then priority, arrival */
	uint32_t n_running;
	uint32_t n_layers, dim, n_heads;
	/* routes published by the coordinator (worker ids per stage) */
	char **pub[BROKER_MAX_ROUTES];
	uint32_t pub_len[BROKER_MAX_ROUTES];
	uint32_t n_pub;
};

struct worker {
	uint8_t ident[WIRE_MAX_IDENTITY];
	size_t ident_len;
	uint64_t serial; /* unique per registration */
	char *id, *host;
	uint32_t pid, layer_first, layer_last, n_layers, vocab, ctx_len, dim, threads, cores;
	int32_t eos;
	uint64_t mem_bytes;
	uint32_t max_sessions; /* min(its HELLO, --max-sessions-per-worker) */
	struct model *model;
	struct link model_link;
	struct link seen_link; /* broker.workers_seen, oldest heard first */
	struct link reap_link; /* broker.reap_workers while lost */
	struct link sessions;  /* struct stage.link of every route stage it runs */
	uint32_t n_sessions;
	uint32_t in_flight; /* OPEN/STEP sent, RESULT not yet back */
	uint64_t steps;     /* RESULTs received */
	uint64_t last_recv_ms, last_hb_ms, busy_until_ms;
	bool lost;
	bool loading;     /* ASSIGN sent, HELLO with the new range not yet back */
	bool reregister;  /* lost because it registered again (no WORKER_DOWN) */
	bool mark;        /* scratch of route_list */
	Itt__WorkerHello *hello;   /* as registered (owned) */
	Itt__Telemetry *telemetry; /* the latest (owned), or NULL */
	uint32_t max_batch_tokens;
	Itt__Settings settings;    /* last known: HELLO, then TELEMETRY, then SET */
	/* tokens per 500 ms bucket, over the last 8 buckets */
	uint32_t tok_bucket[8];
	uint64_t tok_bucket_no;
};

struct client {
	uint8_t ident[WIRE_MAX_IDENTITY];
	size_t ident_len;
	struct link requests; /* open requests (struct request.client_link) */
	uint32_t n_open;
	uint64_t last_recv_ms, last_send_ms;
	struct link seen_link; /* broker.clients_seen, oldest heard first */
	struct link sent_link; /* broker.clients_sent (only while n_open > 0) */
	struct link reap_link; /* broker.reap_clients while gone */
	bool gone;
};

/* One stage of a running request's route: on its worker's session list. */
struct stage {
	struct worker *w;
	struct request *r;
	struct link link; /* struct worker.sessions */
	bool opened;      /* OPEN sent to it (CLOSE owed at the end) */
};

enum req_state {
	REQ_QUEUED,
	REQ_RUNNING,
	REQ_ENDED,
};

struct request {
	/* identity: "client_id\0request_id" */
	char key[2 * 64 + 2];
	size_t key_len;
	const char *client_id, *request_id; /* into key */
	uint64_t session_id;
	enum req_state state;
	Itt__GenerateRequest *req;    /* owned while open; NULL once ended */
	Itt__SamplingParams sampling; /* req->sampling with the seed set (borrows bias) */
	struct model *model;
	struct client *client; /* NULL once ended */
	struct link client_link;
	struct stage stages[BROKER_MAX_STAGES]; /* the route, while running */
	uint32_t n_stages;                      /* 0: not running */
	uint32_t at;                            /* stage of the step in flight */
	uint64_t avoid_worker; /* serial of the worker that failed it last */
	uint32_t step;         /* step number of the next RESULT expected */
	int32_t draft[16];     /* speculative drafts of the step in flight (after the last token) */
	uint32_t n_draft;
	bool branch_rows;      /* guidance by head perturbation: stage tensors hold 2x rows */
	bool awaiting;         /* a step is in flight on the worker */
	/* history for replay: prompt (as tokenized) + generated */
	int32_t *prompt;
	uint32_t n_prompt;
	bool have_prompt;
	/* a conversation's end-of-turn ids (stage 0 reports them at step 0):
	 * they end the request like EOS */
	int32_t stop_tokens[BROKER_MAX_STOP_TOKENS];
	uint32_t n_stop_tokens;
	int32_t *gen;
	uint32_t n_gen, gen_cap;
	/* generated text; [0, text_sent) went out in chunks, the rest is held */
	char *text;
	size_t text_len, text_cap, text_sent;
	/* chunk i covers gen[tok_end[i-1], tok_end[i]) and text[text_end[i-1], text_end[i]) */
	uint32_t *chunk_tok_end;
	size_t *chunk_text_end;
	uint32_t n_chunks, chunk_cap;
	int32_t max_tokens;
	int32_t priority;
	uint64_t arrival;
	bool replay_first; /* at the head of the queue */
	uint32_t replays;
	uint64_t seed;
	uint64_t t_recv_us, t_open_us, t_first_us, t_end_us;
	uint64_t deadline_ms;
	size_t queue_idx, deadline_idx; /* heap slots */
	/* outcome, once ended: code 0 is DONE with stop_reason */
	int end_code;
	char end_reason[256];
	struct link ended_link;
};

struct broker {
	struct broker_config cfg;
	struct wire_limits lim;
	void *zctx, *front, *back;
	struct map requests; /* key -> struct request (open and recently ended) */
	struct map sessions; /* session_id -> struct request (open) */
	struct map workers;  /* routing identity -> struct worker */
	struct map clients;  /* routing identity -> struct client */
	struct map models;   /* name -> struct model */
	struct heap deadlines;
	struct link workers_seen, clients_seen, clients_sent, ended;
	struct link reap_workers, reap_clients;
	uint32_t n_ended;
	uint64_t now_ms, now_us;
	uint64_t next_session, next_arrival, next_worker_serial;
	uint64_t t_start_ms, n_requests, n_completed, n_failed;
	uint64_t rng;
	uint64_t n_replays;
	/* the coordinator (a peer of the back end), if one is connected */
	uint8_t coord_ident[WIRE_MAX_IDENTITY];
	size_t coord_ident_len; /* 0: none */
	char coord_id[129];
	uint64_t coord_last_recv_ms, coord_last_hb_ms;
	/* decisions: a ring, oldest at dec_head */
	struct decision *decisions;
	uint32_t dec_head, n_dec;
	/* pins by worker id */
	struct pin *pins;
	uint32_t n_pins, pins_cap;
};

struct decision {
	uint64_t time_ms;
	char target[129];
	char knob[16];
	char old_value[96];
	char new_value[96];
	char reason[320];
	char source[16];
};

struct pin {
	char id[129];
	unsigned mask; /* enum knob bits */
};

/* broker.c */
/* Empty indices and lists, the clock and the seed source; no sockets. */
void broker_init(struct broker *b);
/* The ZeroMQ context and the two ROUTER sockets of b->cfg; 0 or -1 (logged). */
int broker_bind(struct broker *b);
/* Closes the sockets and frees every object, then every index. */
void broker_free(struct broker *b);
void broker_clock(struct broker *b);
void broker_reap(struct broker *b);
const char *broker_peer_name(const uint8_t *ident, size_t len, char *buf, size_t cap);
/* Asserts every invariant of this header and of the containers (aborts on
 * the first broken one, naming it); the unit tests call it directly. */
void broker_check(const struct broker *b);
void broker_assert_fail(const char *what, const char *file, int line, const char *func)
	__attribute__((noreturn));

/* heads.c: expands GenerateRequest.guidance.head_set into heads from
 * --head-sets DIR (NAME.heads: one "L:H" per line, '#' comments); 0, or
 * INVALID_ARGUMENT or INTERNAL (out of memory) with the reason in *err. */
int heads_expand(const struct broker *b, Itt__Guidance *g, struct itt_err *err);

/* front.c */
bool front_authorized(const struct broker *b, const char *key);
int front_handle(struct broker *b);
int front_send(struct broker *b, struct client *c, int cmd, const ProtobufCMessage *msg);
int front_send_to(struct broker *b, const uint8_t *ident, size_t len, int cmd,
                  const ProtobufCMessage *msg);
int front_send_error(struct broker *b, const uint8_t *ident, size_t len, const char *request_id,
                     int code, const char *reason);
void front_attach(struct broker *b, struct client *c, struct request *r);
void front_detach(struct broker *b, struct request *r);
void front_lose_client(struct broker *b, struct client *c, const char *why);
void front_tick(struct broker *b);

/* back.c */
int back_handle(struct broker *b);
int back_send(struct broker *b, struct worker *w, int cmd, const ProtobufCMessage *msg);
void back_close_session(struct broker *b, struct worker *w, uint64_t session_id, int reason);
int back_send_tensor(struct broker *b, struct worker *w, int cmd, const ProtobufCMessage *msg,
                     const void *tensor, size_t len);
struct worker *back_find_id(struct broker *b, const char *id);
void back_lose_worker(struct broker *b, struct worker *w, const char *why);
/* Frees a worker or a model and what it owns; it must be on no structure
 * any more (or the whole broker is going). */
void worker_destroy(struct worker *w);
void model_destroy(struct model *m);
void back_tick(struct broker *b);

/* route.c: which workers run a session.  Fills stages[0..n) with a usable
 * route of m (published routes first, else formed from the registered
 * ranges), the least loaded, avoiding routes through the worker with serial
 * `avoid` when another exists; returns n, or 0 when no route is usable now. */
uint32_t route_pick(struct broker *b, struct model *m, uint64_t avoid,
                    struct worker **stages);
/* Whether the ids form a route of m now (live, not loading, tiling). */
bool route_valid(struct broker *b, struct model *m, char *const *ids, uint32_t n,
                 struct worker **out);
/* Routes to show in STATS: the valid published ones, else disjoint auto
 * routes.  Fills up to cap routes into out (n_stages in lens); returns how many. */
uint32_t route_list(struct broker *b, struct model *m, struct worker *(*out)[BROKER_MAX_STAGES],
                    uint32_t *lens, uint32_t cap, bool *published);
void route_clear(struct model *m);

/* control.c: telemetry, settings, pins, decisions and the coordinator. */
bool control_is_coord(const struct broker *b, const uint8_t *ident, size_t len);
void control_handle(struct broker *b, const struct wire_msg *m);
void control_telemetry(struct broker *b, struct worker *w, const struct wire_msg *m);
void control_worker_up(struct broker *b, struct worker *w);
void control_worker_down(struct broker *b, struct worker *w, const char *why);
void control_front_set(struct broker *b, const struct wire_msg *m);
void control_decide(struct broker *b, const char *target, const char *knob, const char *old_value,
                    const char *new_value, const char *reason, const char *source);
unsigned control_pins(const struct broker *b, const char *worker_id);
/* Knob names of mask into out (NULL-terminated array of up to 3). */
size_t control_pin_names(unsigned mask, const char **out);
void control_tick(struct broker *b);

/* request.c */
bool req_queue_less(const void *a, const void *b);
bool req_deadline_less(const void *a, const void *b);
struct request *req_new(struct broker *b, Itt__GenerateRequest *g, struct model *m,
                        struct client *c);
void req_dispatch(struct broker *b, struct model *m);
void req_on_worker_error(struct broker *b, struct worker *w, const Itt__Error *e);
/* Ends an open request: code 0 sends DONE with stop reason `why`, any other
 * code sends ERROR code with reason `why`.  r may be freed (keep_ended 0):
 * the caller must not touch it afterwards. */
void req_end(struct broker *b, struct request *r, int code, const char *why);
/* Takes r off its route (CLOSE to its opened stages) and back to the head
 * of its model's queue; `count` makes it a replay (bounded by
 * --max-replays); `culprit` (or NULL) is avoided by the next route. */
void req_requeue(struct broker *b, struct request *r, struct worker *culprit, bool count,
                 const char *why);
void req_on_result_msg(struct broker *b, struct worker *w, const Itt__StepResult *res,
                       const void *tensor, size_t tensor_len);
void req_resend(struct broker *b, struct request *r, const uint8_t *ident, size_t len);
void req_tick(struct broker *b);
/* Forgets an ended request (its idempotency entry) and frees it. */
void req_free(struct broker *b, struct request *r);
/* Frees a request and what it owns; it must be on no structure any more
 * (or the whole broker is going). */
void req_destroy(struct request *r);

#endif
