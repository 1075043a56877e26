/* coord: shared state of itt-coordinator, the control plane (PROTOCOL.md,
 * "Coordinator"; DESIGN.md, "The coordinator").
 *
 * One thread, one zmq_poll loop on one DEALER connected to the broker's
 * back end.  The modules:
 *   config.c      the flag table (defaults, bounds, --help, --print-config);
 *   placement.c   the pure placement function (placement.h has the rules);
 *   controller.c  the pure adaptive-settings rules (controller.h);
 *   coord.c       what the broker tells (WORKER_UP, WORKER_DOWN, TELEMETRY,
 *                 ERROR), the tick (re-plans, controller), PLACE / ROUTES /
 *                 SET, the decisions log;
 *   main.c        the socket, heartbeats, reconnection, the loop, signals.
 *
 * State is soft: it is rebuilt from WORKER_UP and TELEMETRY after every
 * (re)connection, and a coordinator that starts against a cluster whose
 * ranges already form complete routes adopts them and moves nothing.
 *
 * Workers live in a fixed table (slots); a group is a model name plus the
 * sha256 of its file: workers of one model whose files differ are planned
 * apart.  A group's plan is kept as worker slots per stage; every worker of
 * a planned group has a target range, and `placing` while a PLACE for it
 * waits for the WORKER_UP that shows the range. */
#ifndef ITT_COORD_H
#define ITT_COORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "controller.h"
#include "placement.h"

#define COORD_MAX_WORKERS    1024
#define COORD_MAX_GROUPS     64
#define COORD_NAME           129 /* ids, hosts, model names: 128 bytes + NUL */
#define COORD_SHA            65
#define COORD_REASON         512
#define COORD_PLACE_WAIT_MS  60000 /* a PLACE not shown by then is given up */
#define COORD_EWMA_ALPHA     0.5   /* weight of a new ms_per_row_layer */
#define COORD_MIN_BATCH      16
#define COORD_BACKOFF_MIN_MS 250
#define COORD_BACKOFF_MAX_MS 4000
#define COORD_MAXMSG         (64 << 20)

struct coord_config {
	char broker[256];
	char id[COORD_NAME];
	int stages;
	int tpot_ms;
	int interval_ms;
	int hold_s;
	double min_gain;
	int cooldown_s;
	int log_level;
	int decisions;
	bool print_config;
};

/* Returns 0 to run, 1 to exit 0 (--help, --print-config), 2 on a bad flag. */
int coord_config_parse(struct coord_config *c, int argc, char **argv);

struct coord_worker {
	bool used;
	char id[COORD_NAME], host[COORD_NAME], model[COORD_NAME], sha[COORD_SHA];
	int group; /* index in coord.groups */
	/* from WORKER_UP (HELLO) */
	uint32_t first, last, n_layers, cores, threads, batch_tokens, max_batch_tokens;
	uint64_t mem_available, weight_bytes;
	/* from TELEMETRY */
	bool have_tel;
	uint64_t tel_ms; /* when the latest arrived (monotonic) */
	double step_ms, rows_per_step;
	uint64_t steps_delta; /* steps in the latest report */
	uint64_t steps;
	unsigned pinned; /* enum ctl_knob bits */
	double ms_prl;   /* EWMA of ms_per_row_layer; 0: never measured */
	/* plan */
	bool planned;
	uint32_t tgt_first, tgt_last;
	bool placing;
	uint64_t place_ms;
	struct ctl_state ctl;
};

struct coord_group {
	bool used;
	char model[COORD_NAME], sha[COORD_SHA];
	uint32_t n_layers;
	bool have_plan;         /* adopted or planned: its routes are below */
	bool dirty;             /* a join or leave to act on at the next tick */
	char why[COORD_REASON]; /* what made it dirty */
	bool routes_due;        /* publish ROUTES once no worker is placing */
	char routes_why[COORD_REASON];
	char published[COORD_REASON]; /* the model's routes we last sent, as text */
	uint32_t n_routes;
	uint32_t route_len[PLACE_MAX_ROUTES];
	uint16_t route[PLACE_MAX_ROUTES][PLACE_MAX_STAGES]; /* worker slots */
	uint64_t gain_since; /* a re-plan has paid off since (0: not now) */
	uint64_t last_move_ms;
};

struct coord_decision {
	uint64_t time_ms; /* Unix time */
	char target[COORD_NAME];
	char knob[16];
	char old_value[256], new_value[256];
	char reason[COORD_REASON];
};

struct coord {
	struct coord_config cfg;
	void *zctx, *sock;
	uint64_t now_ms; /* monotonic */
	/* connection */
	bool welcomed;
	bool fresh; /* no tick yet since WELCOME: groups seen now are "connected" */
	bool kick;   /* an event wants a decision before the next interval (main.c) */
	uint32_t hb_ms, liveness;
	uint64_t last_recv_ms, next_hb_ms, next_tick_ms, reconnect_at_ms, backoff_ms;
	/* the cluster as the broker tells it */
	struct coord_worker *w; /* COORD_MAX_WORKERS slots */
	struct coord_group g[COORD_MAX_GROUPS];
	/* decisions: a ring of cfg.decisions entries */
	struct coord_decision *dec;
	size_t dec_head, dec_n;
	uint64_t sent; /* PLACE, ROUTES and SET sent since start */
};

/* coord.c */
struct wire_msg;
int coord_init(struct coord *c);
void coord_free(struct coord *c);
/* Forgets the cluster (a new connection rebuilds it). */
void coord_reset(struct coord *c);
void coord_handle(struct coord *c, const struct wire_msg *m);
/* Re-plans and runs the controller; called every interval_ms. */
void coord_tick(struct coord *c);
/* Appends a decision and logs it at INFO. */
void coord_decide(struct coord *c, const char *target, const char *knob, const char *old_value,
                  const char *new_value, const char *reason);
/* Sends a message to the broker; 0 or -1 (logged). */
int coord_send(struct coord *c, int cmd, const void *msg);

#endif
