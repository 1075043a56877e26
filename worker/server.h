/* server: the worker's event loop — the broker connection and everything
 * that happens on it (PROTOCOL.md, "Worker session").
 *
 * Contract.  server_run owns one libuv loop and one ZeroMQ DEALER socket,
 * both touched only by the calling thread.  It connects to the broker, sends
 * HELLO, and from then on: drains the socket on every wake of the uv_poll on
 * ZMQ_FD and after every send (the fd is edge-triggered), decodes and
 * validates OPEN/STEP/CLOSE (sched_decode_*) and queues them for the compute
 * thread, sends the RESULTs and ERRORs that thread produces (uv_async), sends
 * HEARTBEAT every heartbeat_ms, and when the broker has been silent for
 * liveness x heartbeat_ms closes the socket and reconnects after a backoff
 * (reconnect_min_ms doubling to reconnect_max_ms, with jitter), sending HELLO
 * again.  ERROR NOT_FOUND without a session ("unknown worker": a restarted
 * broker) makes it send HELLO at once.  Every (re)registration starts a new
 * epoch: the compute thread forgets its sessions, and results of the old
 * epoch are dropped.  TELEMETRY goes out every second while registered.
 * SETTINGS are validated here and applied by the compute thread between two
 * steps (ERROR INVALID_ARGUMENT for a bad value, nothing changes); ASSIGN
 * starts a new epoch too, the compute thread loads the range (OPEN/STEP
 * meanwhile get ERROR UNAVAILABLE "loading layers") and HELLO announces the
 * range in force.  SIGINT/SIGTERM: BYE, then a clean stop.
 *
 * Nothing the broker sends can stop the loop: malformed frames are logged
 * and dropped, bad bodies are answered with ERROR naming the field. */
#ifndef ITT_SERVER_H
#define ITT_SERVER_H

#include <stdint.h>

#include "scheduler.h"

struct server_config {
	const char *broker;        /* endpoint, e.g. tcp://127.0.0.1:5556 */
	const char *worker_id;     /* unique per process */
	const char *model_name;    /* service name in HELLO */
	uint32_t heartbeat_ms;     /* until WELCOME says otherwise */
	uint32_t liveness;         /* silent intervals before the broker is dead */
	uint32_t reconnect_min_ms; /* first backoff (250) */
	uint32_t reconnect_max_ms; /* backoff cap (4000) */
	uint32_t max_sessions;     /* advertised in HELLO */
	uint32_t max_batch_tokens; /* advertised in HELLO; bound of SETTINGS batch_tokens */
	const char *sha256;        /* hex of the model file (HELLO files); NULL: no files */
	uint64_t file_bytes;       /* its size */
};

#define SERVER_DEFAULT_BROKER       "tcp://127.0.0.1:5556"
#define SERVER_DEFAULT_HEARTBEAT_MS 500
#define SERVER_DEFAULT_LIVENESS     3
#define SERVER_RECONNECT_MIN_MS     250
#define SERVER_RECONNECT_MAX_MS     4000
/* Heartbeat and liveness a WELCOME may set. */
#define SERVER_MIN_HEARTBEAT_MS 10
#define SERVER_MAX_HEARTBEAT_MS 60000
#define SERVER_MAX_LIVENESS     100

/* Runs until SIGINT/SIGTERM; starts the scheduler's compute thread and
 * stops it before returning.  Returns 0 on a clean stop, 1 on a start-up
 * failure (logged). */
int server_run(const struct server_config *c, sched_t *sched);

#endif
