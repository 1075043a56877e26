/* wire: framing of itt protocol messages over ZeroMQ (PROTOCOL.md).
 *
 * A message is [signature "ITT\x01"] [command byte] [protobuf body]
 * [optional tensor bytes]; on a ROUTER socket a routing-identity frame comes
 * first.  wire_recv always consumes the whole multipart message, even when it
 * is malformed, and classifies it: a framing error yields an itt code and a
 * reason so the caller can answer with ERROR.  Bodies are decoded by the
 * caller with the generated itt__*__unpack functions (itt.pb-c.h) and checked
 * with the validators in validate.h. */
#ifndef ITT_WIRE_H
#define ITT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <zmq.h>

#include "err.h"
#include "itt.pb-c.h"

#define WIRE_SIGNATURE "ITT\x01"
#define WIRE_SIGNATURE_LEN 4
#define WIRE_MAX_IDENTITY 255

enum wire_cmd {
	WIRE_SUBMIT = 0x01,
	WIRE_CHUNK = 0x02,
	WIRE_DONE = 0x03,
	WIRE_ERROR = 0x04,
	WIRE_CANCEL = 0x05,
	WIRE_HEARTBEAT = 0x06,
	WIRE_STATS = 0x07,
	WIRE_STATS_REPLY = 0x08,
	WIRE_HELLO = 0x10,
	WIRE_WELCOME = 0x11,
	WIRE_OPEN = 0x12,
	WIRE_STEP = 0x13,
	WIRE_RESULT = 0x14,
	WIRE_CLOSE = 0x15,
	WIRE_BYE = 0x16,
	WIRE_TELEMETRY = 0x17,
	WIRE_SETTINGS = 0x18,
	WIRE_ASSIGN = 0x19,
	WIRE_CONTROL_HELLO = 0x20,
	WIRE_WORKER_UP = 0x21,
	WIRE_WORKER_DOWN = 0x22,
	WIRE_PLACE = 0x23,
	WIRE_ROUTES = 0x24,
	WIRE_SET = 0x25,
	WIRE_SET_REPLY = 0x26,
};

/* The protocol code (Itt__Code) of any code a struct itt_err can hold: a
 * protocol code is itself, an engine code (ITT_E_*, negative) maps by the
 * one table of PROTOCOL.md "Errors": invalid, range, format and unsupported
 * input are INVALID_ARGUMENT, not found NOT_FOUND, a full bounded resource
 * OVERLOADED, i/o and memory failures INTERNAL. */
int wire_code(int code);

/* Bytes of one element of a tensor frame of this dtype (0: unknown). */
size_t wire_dtype_size(int dtype);
/* Checks a tensor frame against its description: dtype known, rows and
 * cols as expected (want_rows 0: any 1..max_rows), byte length exact.
 * 0, or ITT__CODE__INVALID_ARGUMENT with a reason naming `what`. */
int wire_check_tensor(const Itt__TensorInfo *ti, const void *data, size_t len, uint32_t want_rows,
		      uint32_t max_rows, uint32_t cols, const char *what, struct itt_err *err);

/* Name of a command ("SUBMIT"), or NULL if unknown. */
const char *wire_cmd_name(int cmd);
/* Name of an error code ("INVALID_ARGUMENT"), never NULL. */
const char *wire_code_name(int code);
/* True when cmd may carry a 4th (tensor) frame. */
bool wire_cmd_has_tensor(int cmd);

/* A received message; parts stay owned by it until wire_msg_close. */
struct wire_msg {
	uint8_t identity[WIRE_MAX_IDENTITY];
	size_t identity_len; /* 0 on a DEALER socket */
	int cmd;             /* -1 when the framing was bad */
	const uint8_t *body;
	size_t body_len;
	const uint8_t *tensor; /* NULL when absent */
	size_t tensor_len;
	zmq_msg_t parts[4];
	int n_parts;
};

/* Receives one whole message from sock (router: an identity frame comes
 * first).  flags: 0 or ZMQ_DONTWAIT.  Returns:
 *   1   a message arrived; if it is malformed, *err is set (code
 *       ITT__CODE__INVALID_ARGUMENT, VERSION_MISMATCH or UNIMPLEMENTED, and
 *       a reason) and m->cmd may be -1; otherwise err->code is 0;
 *   0   nothing to read (ZMQ_DONTWAIT) or interrupted;
 *  -1   socket error (errno set).
 * `accepts` lists the commands this receiver handles in this direction,
 * terminated by 0; others are UNIMPLEMENTED. */
int wire_recv(void *sock, bool router, const int *accepts, struct wire_msg *m,
	      struct itt_err *err, int flags);
void wire_msg_close(struct wire_msg *m);

/* Sends [identity] signature, cmd, packed body (NULL: empty), [tensor].
 * Returns 0 or -1 with errno (EHOSTUNREACH from a ROUTER_MANDATORY socket
 * when the peer is gone, EAGAIN when it would block with ZMQ_DONTWAIT). */
int wire_send(void *sock, const void *identity, size_t identity_len, int cmd,
	      const ProtobufCMessage *body, const void *tensor, size_t tensor_len, int flags);

/* Sends ERROR {request_id, code, reason, session_id}. */
int wire_send_error(void *sock, const void *identity, size_t identity_len,
		    const char *request_id, uint64_t session_id, int code, const char *fmt, ...)
	__attribute__((format(printf, 7, 8)));

/* Milliseconds on a monotonic clock. */

#endif
