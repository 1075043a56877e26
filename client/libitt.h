/* libitt: the C client library of an itt cluster (PROTOCOL.md, "Client session").
 *
 * A client owns one ZeroMQ DEALER socket connected to the broker's front end.
 * Several generation streams may be open on it at once; the broker's messages
 * are demultiplexed by request_id into per-stream queues, and chunks are
 * deduplicated by seq, so every stream delivers seq 0, 1, 2, ... exactly once
 * and then exactly one final event (DONE or ERROR).
 *
 * The library does its I/O only inside its calls (no thread of its own): while
 * streams are open, call itt_stream_next (or itt_client_poll) at least every
 * second so that heartbeats go out and silence is noticed.  While streams are
 * open the client sends HEARTBEAT every heartbeat_ms; when nothing has been
 * heard from the broker for resubmit_ms it re-sends the open SUBMITs with the
 * same (client_id, request_id), which the broker treats as a reconnection
 * (idempotency), and after give_up_ms of silence a stream ends with a local
 * ERROR UNAVAILABLE.  A request without a seed gets a random one here, so a
 * re-sent SUBMIT reproduces the same tokens even at a restarted broker.
 *
 * Errors are the protocol's codes (Itt__Code, itt.pb-c.h) with a reason.
 * Nothing the broker sends can make the library abort: a malformed or
 * unexpected message is dropped.
 *
 * Threads: a client and its streams are used by one thread at a time (a
 * ZeroMQ socket is not thread-safe); use one client per thread for
 * parallelism.  Different clients are independent.
 *
 * Ownership: every pointer passed in is borrowed for the duration of the call
 * (strings and arrays are copied).  Pointers in an event stay valid until the
 * next itt_stream_next or itt_stream_destroy on that stream.  itt_stats hands
 * the caller a ClusterStats that only itt_stats_free releases, and
 * itt_client_settings a SettingsReply that only itt_settings_reply_free
 * releases. */
#ifndef ITT_LIBITT_H
#define ITT_LIBITT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "itt.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

#include "err.h"

typedef struct itt_client itt_client_t;
typedef struct itt_stream itt_stream_t;

/* Errors are the project's one record, struct itt_err (err.h): code is an
 * Itt__Code (0 = none), msg names the condition. */

/* Name of a code ("INVALID_ARGUMENT"); never NULL. */
const char *itt_code_name(int code);

struct itt_client_options {
	const char *client_id; /* NULL: random "c-" + 16 hex digits; 1..64 bytes */
	const char *api_key;   /* NULL: none; at most 128 bytes */
	int heartbeat_ms;      /* HEARTBEAT interval while streams are open; default 1000 */
	int resubmit_ms;       /* broker silence before open SUBMITs are re-sent; default 5000 */
	int give_up_ms;        /* broker silence that ends a stream (UNAVAILABLE); default
				  30000; 0: never */
	int linger_ms;         /* ZMQ_LINGER on destroy; default 1000 */
};

/* Fills o with the defaults above. */
void itt_client_options_default(struct itt_client_options *o);

/* Connects to the broker's front end (e.g. "tcp://127.0.0.1:5555"); the
 * connection itself is made in the background, so a broker that is not up
 * yet is not an error.  opts NULL: defaults.  Returns NULL with *err set
 * (INVALID_ARGUMENT: a bad option or endpoint; INTERNAL: ZeroMQ failed). */
itt_client_t *itt_client_new(const char *endpoint, const struct itt_client_options *opts,
			     struct itt_err *err);

/* Destroys open streams (cancelling those that have not ended), closes the
 * socket and frees the client; accepts NULL and nulls *client_p.  Streams of
 * this client must not be used afterwards. */
void itt_client_destroy(itt_client_t **client_p);

/* The client id in use (owned by the client). */
const char *itt_client_id(const itt_client_t *client);

/* Sampling parameters: a field is sent only when its bit is in `set`;
 * absent fields take the defaults of PROTOCOL.md ("Limits"). */
enum itt_sampling_field {
	ITT_SAMPLING_TEMPERATURE = 1u << 0,
	ITT_SAMPLING_TOP_K = 1u << 1,
	ITT_SAMPLING_TOP_P = 1u << 2,
	ITT_SAMPLING_MIN_P = 1u << 3,
	ITT_SAMPLING_TYPICAL_P = 1u << 4,
	ITT_SAMPLING_REPEAT_PENALTY = 1u << 5,
	ITT_SAMPLING_REPEAT_LAST_N = 1u << 6,
	ITT_SAMPLING_PRESENCE_PENALTY = 1u << 7,
	ITT_SAMPLING_FREQUENCY_PENALTY = 1u << 8,
	ITT_SAMPLING_SEED = 1u << 9,
};

struct itt_logit_bias {
	int32_t token;
	float bias; /* -INFINITY bans the token */
};

struct itt_sampling {
	uint32_t set; /* enum itt_sampling_field bits */
	float temperature;
	int32_t top_k;
	float top_p;
	float min_p;
	float typical_p;
	float repeat_penalty;
	int32_t repeat_last_n;
	float presence_penalty;
	float frequency_penalty;
	uint64_t seed;
	const struct itt_logit_bias *logit_bias; /* borrowed during itt_submit */
	size_t n_logit_bias;
};

/* Inference-time techniques (PROTOCOL.md, "Techniques"); the broker
 * validates them at SUBMIT against the model (a bad value ends the stream
 * with ERROR INVALID_ARGUMENT naming the field). */
struct itt_guidance {
	const char *const *heads;    /* "L:H" each, or NULL */
	size_t n_heads;
	const char *head_set;        /* a NAME of the broker's --head-sets folder, or NULL */
	float scale;                 /* s >= 0; 0: off */
	float blend;                 /* u in [0, 1]; < 0: absent (1) */
	const char *negative_prompt; /* classifier-free guidance, or NULL */
};

struct itt_speculative {
	const char *draft;    /* "ngram" or "exit"; NULL: absent ("ngram") */
	uint32_t max_draft;   /* 1..16 (always sent: 0 is refused) */
	uint32_t exit_layers; /* "exit": 1..n_layers-1; 0: absent */
	uint32_t ngram_min;   /* 0: absent (1) */
	uint32_t ngram_max;   /* 0: absent (3) */
};

struct itt_early_exit {
	float threshold;         /* top-1 minus top-2 probability, [0, 1] */
	const uint32_t *layers;  /* ascending, each < n_layers - 1 */
	size_t n_layers;
};

/* One turn of a conversation (ChatMessage, PROTOCOL.md "Chat"). */
struct itt_message {
	const char *role;    /* "system" (first only), "user" or "assistant" */
	const char *content; /* NULL: "" */
};

/* Mirrors GenerateRequest; itt_request_init gives an empty prompt, the
 * default max_tokens, all sampling fields absent and no techniques. */
struct itt_request {
	const char *request_id;       /* NULL: generated, unique within the client */
	const char *model;            /* required */
	const char *prompt;           /* NUL-terminated text (BOS added by the worker); NULL: "" */
	const int32_t *prompt_tokens; /* or ids used as they are; exclusive with a prompt */
	size_t n_prompt_tokens;
	int32_t max_tokens; /* < 0: absent (default 128) */
	struct itt_sampling sampling;
	const char *const *stop; /* stop strings */
	size_t n_stop;
	uint32_t deadline_ms; /* 0: the broker's default */
	int32_t priority;
	const char *tenant; /* NULL: none */
	/* techniques, NULL: absent (borrowed during itt_submit) */
	const struct itt_guidance *guidance;
	const struct itt_speculative *speculative;
	const struct itt_early_exit *early_exit;
	/* chat: a conversation instead of prompt / prompt_tokens, rendered by
	 * the worker with the model's chat template or chat_template (a name:
	 * "chatml", "llama3", ...; NULL: the model's); generation ends at the
	 * end of the assistant's turn (borrowed during itt_submit) */
	const struct itt_message *messages;
	size_t n_messages;
	const char *chat_template;
};

void itt_request_init(struct itt_request *r);

/* Validates the request against the protocol's limits and sends SUBMIT.
 * Returns the open stream, or NULL with *err set (INVALID_ARGUMENT for a
 * request the broker would refuse; INTERNAL when the send failed).  The
 * stream belongs to the caller (itt_stream_destroy). */
itt_stream_t *itt_submit(itt_client_t *client, const struct itt_request *req,
			 struct itt_err *err);

enum itt_event_type {
	ITT_EVENT_NONE = 0, /* timeout: nothing yet */
	ITT_EVENT_CHUNK,
	ITT_EVENT_DONE,
	ITT_EVENT_ERROR,
};

struct itt_event {
	enum itt_event_type type;
	/* CHUNK: the next piece, in seq order without gaps or repeats. */
	uint32_t seq;
	const int32_t *tokens; /* generated ids in this chunk */
	size_t n_tokens;
	const char *text; /* their text, NUL-terminated (UTF-8 may split across chunks) */
	size_t text_len;
	/* DONE */
	const char *stop_reason; /* "eos", "length", "stop", "context" */
	const int32_t *prompt_tokens;
	size_t n_prompt_tokens;
	uint32_t n_generated;
	uint32_t n_chunks;
	uint64_t seed;
	uint32_t replays;
	double queue_ms, first_token_ms, total_ms;
	/* ERROR (from the broker, or local: UNAVAILABLE after give_up_ms of
	 * silence, INTERNAL when the stream lost chunks) */
	int code;
	const char *reason;
};

/* Waits up to timeout_ms (< 0: forever, 0: no wait) for the stream's next
 * event.  Returns 1 with *ev filled, 0 on timeout (ev->type NONE), or -1
 * when the stream has already delivered its DONE or ERROR. */
int itt_stream_next(itt_stream_t *stream, struct itt_event *ev, int timeout_ms);

/* Sends CANCEL; the stream then ends with ERROR CANCELLED (or with its DONE
 * when it had already finished).  Returns 0, or -1 when the stream has
 * already ended or the send failed. */
int itt_stream_cancel(itt_stream_t *stream);

/* The stream's request id (owned by the stream). */
const char *itt_stream_id(const itt_stream_t *stream);

/* True once the final event has been delivered by itt_stream_next. */
bool itt_stream_ended(const itt_stream_t *stream);

/* Cancels the request if it has not ended, and frees the stream; accepts
 * NULL and nulls *stream_p. */
void itt_stream_destroy(itt_stream_t **stream_p);

/* Runs the client's I/O (receive, heartbeats, re-sends) for up to
 * timeout_ms, queueing what arrives into the streams.  For callers that hold
 * streams without reading them.  Returns 0, or -1 on a socket error. */
int itt_client_poll(itt_client_t *client, int timeout_ms);

/* Asks the broker for STATS and waits up to timeout_ms for STATS_REPLY.
 * Returns 0 with *out set (free with itt_stats_free), or an Itt__Code with
 * *err set: the broker's ERROR, or UNAVAILABLE when no reply came in time. */
int itt_stats(itt_client_t *client, Itt__ClusterStats **out, int timeout_ms, struct itt_err *err);

void itt_stats_free(Itt__ClusterStats **stats_p);

/* Live-adjustable worker settings ("knobs", PROTOCOL.md "Telemetry,
 * settings, placement"), as bits of a mask. */
enum itt_knob {
	ITT_KNOB_THREADS = 1u << 0,      /* compute threads, 1..64 */
	ITT_KNOB_BATCH_TOKENS = 1u << 1, /* rows per forward step, 1..the worker's max_batch_tokens */
	ITT_KNOB_SLOW_MS = 1u << 2,      /* debug: sleep after each step, 0..10000 ms */
};
#define ITT_KNOBS_ALL (ITT_KNOB_THREADS | ITT_KNOB_BATCH_TOKENS | ITT_KNOB_SLOW_MS)

/* Name of one knob bit ("threads", "batch_tokens", "slow_ms"), or NULL. */
const char *itt_knob_name(unsigned knob);
/* The bit of a knob name, or 0 when the name is unknown. */
unsigned itt_knob_parse(const char *name);
/* Checks a knob's value against the protocol's range (batch_tokens: only
 * >= 1 here; its upper bound is the worker's).  0, or INVALID_ARGUMENT with
 * *err naming the knob and its range. */
int itt_knob_check(unsigned knob, long value, struct itt_err *err);

/* Mirrors SettingsChange (client -> broker, SET): set the knobs in `set`
 * (values in the fields of the same name); with `pin` also pin them;
 * pin the knobs in pin_knobs at their current values; unpin those in
 * unpin_knobs.  At least one of set, pin_knobs, unpin_knobs is non-empty. */
struct itt_settings_change {
	const char *worker_id; /* required, 1..128 bytes */
	unsigned set;          /* enum itt_knob bits */
	uint32_t threads;
	uint32_t batch_tokens;
	uint32_t slow_ms;
	bool pin;
	unsigned pin_knobs;   /* enum itt_knob bits */
	unsigned unpin_knobs; /* enum itt_knob bits */
	const char *reason;   /* NULL: none; at most 256 bytes */
};

/* Validates the change, sends SET and waits up to timeout_ms (< 0: no limit)
 * for SET_REPLY.  Returns 0 with *out set (free with
 * itt_settings_reply_free), or an Itt__Code with *err set: INVALID_ARGUMENT
 * for a change refused here, the broker's ERROR (e.g. NOT_FOUND for an
 * unknown worker, INVALID_ARGUMENT for a bad value or a pinned knob), or
 * UNAVAILABLE when no reply came in time. */
int itt_client_settings(itt_client_t *client, const struct itt_settings_change *change,
			Itt__SettingsReply **out, int timeout_ms, struct itt_err *err);

void itt_settings_reply_free(Itt__SettingsReply **reply_p);

#ifdef __cplusplus
}
#endif

#endif
