/* wire: multipart framing, validation of frames 0-1, and sending. */
#include "wire.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *wire_cmd_name(int cmd)
{
	switch (cmd) {
	case WIRE_SUBMIT: return "SUBMIT";
	case WIRE_CHUNK: return "CHUNK";
	case WIRE_DONE: return "DONE";
	case WIRE_ERROR: return "ERROR";
	case WIRE_CANCEL: return "CANCEL";
	case WIRE_HEARTBEAT: return "HEARTBEAT";
	case WIRE_STATS: return "STATS";
	case WIRE_STATS_REPLY: return "STATS_REPLY";
	case WIRE_HELLO: return "HELLO";
	case WIRE_WELCOME: return "WELCOME";
	case WIRE_OPEN: return "OPEN";
	case WIRE_STEP: return "STEP";
	case WIRE_RESULT: return "RESULT";
	case WIRE_CLOSE: return "CLOSE";
	case WIRE_BYE: return "BYE";
	case WIRE_TELEMETRY: return "TELEMETRY";
	case WIRE_SETTINGS: return "SETTINGS";
	case WIRE_ASSIGN: return "ASSIGN";
	case WIRE_CONTROL_HELLO: return "CONTROL_HELLO";
	case WIRE_WORKER_UP: return "WORKER_UP";
	case WIRE_WORKER_DOWN: return "WORKER_DOWN";
	case WIRE_PLACE: return "PLACE";
	case WIRE_ROUTES: return "ROUTES";
	case WIRE_SET: return "SET";
	case WIRE_SET_REPLY: return "SET_REPLY";
	}
	return NULL;
}

const char *wire_code_name(int code)
{
	const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&itt__code__descriptor, code);
	return v ? v->name : "UNKNOWN_CODE";
}

bool wire_cmd_has_tensor(int cmd)
{
	return cmd == WIRE_OPEN || cmd == WIRE_STEP || cmd == WIRE_RESULT;
}

size_t wire_dtype_size(int dtype)
{
	switch (dtype) {
	case ITT__DTYPE__F32: return 4;
	case ITT__DTYPE__F16: return 2;
	}
	return 0;
}

int wire_code(int code)
{
	if (code >= 0)
		return code; /* already a protocol code (0: OK) */
	switch (code) {
	case ITT_E_INVALID:
	case ITT_E_RANGE:
	case ITT_E_FORMAT:
	case ITT_E_UNSUPPORTED: return ITT__CODE__INVALID_ARGUMENT;
	case ITT_E_NOTFOUND: return ITT__CODE__NOT_FOUND;
	case ITT_E_FULL: return ITT__CODE__OVERLOADED;
	case ITT_E_IO:
	case ITT_E_NOMEM:
	default: return ITT__CODE__INTERNAL;
	}
}

int wire_check_tensor(const Itt__TensorInfo *ti, const void *data, size_t len, uint32_t want_rows,
		      uint32_t max_rows, uint32_t cols, const char *what, struct itt_err *err)
{
	const int bad = ITT__CODE__INVALID_ARGUMENT;
	if (!ti)
		return itt_err_set(err, bad, "%s: no tensor description", what);
	size_t es = wire_dtype_size(ti->dtype);
	if (!es)
		return itt_err_set(err, bad, "%s: unknown dtype %d", what, (int)ti->dtype);
	if (ti->cols != cols)
		return itt_err_set(err, bad, "%s: %u columns, expected %u", what, ti->cols, cols);
	if (want_rows && ti->rows != want_rows)
		return itt_err_set(err, bad, "%s: %u rows, expected %u", what, ti->rows, want_rows);
	if (!want_rows && (ti->rows == 0 || ti->rows > max_rows))
		return itt_err_set(err, bad, "%s: %u rows, expected 1..%u", what, ti->rows,
		                   max_rows);
	if (!data || len != (size_t)ti->rows * cols * es)
		return itt_err_set(err, bad, "%s: tensor frame has %zu bytes, %u x %u %s need %zu",
		                   what, data ? len : 0, ti->rows, cols, es == 4 ? "F32" : "F16",
		                   (size_t)ti->rows * cols * es);
	return 0;
}

int wire_recv(void *sock, bool router, const int *accepts, struct wire_msg *m,
	      struct itt_err *err, int flags)
{
	zmq_msg_t extra;
	int total = 0;

	memset(m, 0, offsetof(struct wire_msg, parts));
	m->cmd = -1;
	m->n_parts = 0;
	err->code = 0;
	err->msg[0] = 0;

	/* Identity frame on a ROUTER. */
	if (router) {
		zmq_msg_t id;
		zmq_msg_init(&id);
		if (zmq_msg_recv(&id, sock, flags) < 0) {
			int e = errno;
			zmq_msg_close(&id);
			errno = e;
			return e == EAGAIN || e == EINTR ? 0 : -1;
		}
		size_t n = zmq_msg_size(&id);
		m->identity_len = n > WIRE_MAX_IDENTITY ? WIRE_MAX_IDENTITY : n;
		memcpy(m->identity, zmq_msg_data(&id), m->identity_len);
		bool has_more = zmq_msg_more(&id);
		zmq_msg_close(&id);
		if (!has_more) {
			itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "expected 3 or 4 frames, got 0");
			return 1;
		}
		flags = 0; /* the rest of a multipart message is already here */
	}
	/* Up to 4 frames kept; any further ones drained and counted. */
	for (;;) {
		zmq_msg_t *dst = m->n_parts < 4 ? &m->parts[m->n_parts] : &extra;
		zmq_msg_init(dst);
		if (zmq_msg_recv(dst, sock, total == 0 ? flags : 0) < 0) {
			int e = errno;
			zmq_msg_close(dst);
			if (total == 0) {
				errno = e;
				return e == EAGAIN || e == EINTR ? 0 : -1;
			}
			break; /* cannot happen mid-message; treat as truncated */
		}
		total++;
		bool has_more = zmq_msg_more(dst);
		if (m->n_parts < 4)
			m->n_parts++;
		else
			zmq_msg_close(&extra);
		if (!has_more)
			break;
	}
	if (total < 3 || total > 4) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "expected 3 or 4 frames, got %d", total);
		return 1;
	}
	if (zmq_msg_size(&m->parts[0]) != WIRE_SIGNATURE_LEN ||
	    memcmp(zmq_msg_data(&m->parts[0]), WIRE_SIGNATURE, WIRE_SIGNATURE_LEN) != 0) {
		char hex[2 * 8 + 4] = "";
		size_t n = zmq_msg_size(&m->parts[0]);
		const uint8_t *p = zmq_msg_data(&m->parts[0]);
		for (size_t i = 0; i < n && i < 8; i++)
			snprintf(hex + 2 * i, 3, "%02x", p[i]);
		if (n > 8)
			strcat(hex, "...");
		itt_err_set(err, ITT__CODE__VERSION_MISMATCH, "signature %s is not ITT version 1 (49545401)",
			 n ? hex : "(empty)");
		return 1;
	}
	if (zmq_msg_size(&m->parts[1]) != 1) {
		itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "command frame has %zu bytes; expected 1",
			 zmq_msg_size(&m->parts[1]));
		return 1;
	}
	int cmd = *(const uint8_t *)zmq_msg_data(&m->parts[1]);
	bool ok = false;
	for (const int *a = accepts; a && *a; a++)
		ok |= *a == cmd;
	if (!ok) {
		if (wire_cmd_name(cmd))
			itt_err_set(err, ITT__CODE__UNIMPLEMENTED,
			            "command %s (0x%02x) is not accepted here", wire_cmd_name(cmd), cmd);
		else
			itt_err_set(err, ITT__CODE__UNIMPLEMENTED, "unknown command 0x%02x", cmd);
		return 1;
	}
	m->cmd = cmd;
	m->body = zmq_msg_data(&m->parts[2]);
	m->body_len = zmq_msg_size(&m->parts[2]);
	if (total == 4) {
		if (!wire_cmd_has_tensor(cmd)) {
			itt_err_set(err, ITT__CODE__INVALID_ARGUMENT, "command %s carries no tensor frame", wire_cmd_name(cmd));
			return 1;
		}
		m->tensor = zmq_msg_data(&m->parts[3]);
		m->tensor_len = zmq_msg_size(&m->parts[3]);
	}
	return 1;
}

void wire_msg_close(struct wire_msg *m)
{
	for (int i = 0; i < m->n_parts; i++)
		zmq_msg_close(&m->parts[i]);
	m->n_parts = 0;
}

int wire_send(void *sock, const void *identity, size_t identity_len, int cmd,
	      const ProtobufCMessage *body, const void *tensor, size_t tensor_len, int flags)
{
	uint8_t c = (uint8_t)cmd;
	uint8_t stack[1024];
	uint8_t *buf = stack;
	size_t len = body ? protobuf_c_message_get_packed_size(body) : 0;
	int rc = -1;

	if (len > sizeof stack && !(buf = malloc(len))) {
		errno = ENOMEM;
		return -1;
	}
	if (body)
		protobuf_c_message_pack(body, buf);
	int more = ZMQ_SNDMORE | flags;
	if (identity && zmq_send(sock, identity, identity_len, more) < 0)
		goto out;
	if (zmq_send(sock, WIRE_SIGNATURE, WIRE_SIGNATURE_LEN, more) < 0 ||
	    zmq_send(sock, &c, 1, more) < 0 ||
	    zmq_send(sock, buf, len, (tensor ? ZMQ_SNDMORE : 0) | flags) < 0)
		goto out;
	if (tensor && zmq_send(sock, tensor, tensor_len, flags) < 0)
		goto out;
	rc = 0;
out:
	if (buf != stack) {
		int e = errno;
		free(buf);
		errno = e;
	}
	return rc;
}

int wire_send_error(void *sock, const void *identity, size_t identity_len,
		    const char *request_id, uint64_t session_id, int code, const char *fmt, ...)
{
	char reason[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof reason, fmt, ap);
	va_end(ap);
	Itt__Error e = ITT__ERROR__INIT;
	e.request_id = (char *)(request_id ? request_id : "");
	e.has_code = 1;
	e.code = (Itt__Code)code;
	e.reason = reason;
	e.has_session_id = session_id != 0;
	e.session_id = session_id;
	return wire_send(sock, identity, identity_len, WIRE_ERROR, &e.base, NULL, 0, 0);
}
