/* brokerutil: an in-memory broker for the unit tests of broker/.
 *
 * tb_new() builds a struct broker from its flags with the broker's own
 * set-up (broker_init, broker_bind) on inproc endpoints; peers are DEALER
 * sockets with a routing identity that speak the protocol to it, and
 * tb_pump_* hands the next message to front_handle / back_handle, so every
 * test drives the real handlers and reads what the broker really sends.
 * The core is linked with ITT_CHECKS, so broker_check() runs after every
 * handled message; tests call it again after poking state by hand. */
#ifndef ITT_BROKERUTIL_H
#define ITT_BROKERUTIL_H

#include <stdbool.h>
#include <stdint.h>

#include "broker.h"

#define TB_MAX_PEERS 16
#define TB_VOCAB     100
#define TB_CTX       64
#define TB_EOS       2
#define TB_DIM       8

struct tb {
	struct broker b;
	void *peers[TB_MAX_PEERS];
	int n_peers;
};

/* A broker with the flags argv[0..argc) (after the program name). */
struct tb *tb_new(int argc, const char *const *argv);
void tb_free(struct tb *t);

/* A DEALER with routing identity `ident`, connected to the back end
 * (workers, the coordinator) or the front end (clients). */
void *tb_peer(struct tb *t, bool back, const char *ident);
void tb_send(void *peer, int cmd, const ProtobufCMessage *msg);
/* Waits for the next message on the front / back end and handles it. */
void tb_pump_front(struct tb *t);
void tb_pump_back(struct tb *t);

/* Receives the next message on a peer (waiting up to a second), asserts
 * its command and returns it; the caller closes it (wire_msg_close). */
void tb_expect(void *peer, int cmd, struct wire_msg *m);
/* True when nothing more arrives on the peer within a few milliseconds. */
bool tb_quiet(void *peer);

/* Registers worker `id` (also its routing identity) of `model` with layers
 * [first, last) of n_layers and room for max_sessions, through HELLO; reads
 * the WELCOME.  *peer gets its socket (may be NULL). */
struct worker *tb_worker(struct tb *t, const char *id, const char *model, uint32_t first,
                         uint32_t last, uint32_t n_layers, uint32_t max_sessions, void **peer);

/* SUBMIT of request_id by client_id on `client`: prompt tokens 1..n_prompt,
 * max_tokens, deadline_ms (0: the default); handled.  Returns the request
 * (NULL when it was refused). */
struct request *tb_submit(struct tb *t, void *client, const char *client_id, const char *request_id,
                          const char *model, uint32_t n_prompt, int32_t max_tokens,
                          uint32_t deadline_ms);
/* The request with these ids, open or ended, or NULL. */
struct request *tb_request(struct tb *t, const char *client_id, const char *request_id);

/* RESULT of the last stage for a session's step, token with text piece;
 * handled. */
void tb_result(struct tb *t, void *worker, uint64_t session_id, uint32_t step, int32_t token,
               const char *piece);

#endif
