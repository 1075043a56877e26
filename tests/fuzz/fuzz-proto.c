/* fuzz-proto: libFuzzer target for the protocol bodies (itt.proto).
 *
 * Input: the first byte selects a message type (modulo the table below),
 * the rest is that message's encoded body, unpacked with its generated
 * itt__*__unpack function, as every process does with a received frame 2.
 * Contract under test: unpack either fails (NULL) or yields a message that
 * packs again to exactly get_packed_size bytes (and, when that form unpacks
 * again, to the same size once more); the validators (validate_generate on GenerateRequest, with
 * and without a vocabulary; validate_sampling on SamplingParams and on the sampling of SessionOpen
 * and GenerateRequest) return 0 or INVALID_ARGUMENT with a non-empty reason.  ASan and UBSan watch
 * every read. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "itt.pb-c.h"
#include "validate.h"

#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

/* One wrapper per message so the generated, typed unpack functions are the
 * ones exercised. */
#define FUZZ_UNPACK(name, type)                                                                    \
	static ProtobufCMessage *fuzz_unpack_##name(size_t n, const uint8_t *d)                    \
	{                                                                                          \
		type *m = itt__##name##__unpack(NULL, n, d);                                       \
		return m ? &m->base : NULL;                                                        \
	}

FUZZ_UNPACK(generate_request, Itt__GenerateRequest)
FUZZ_UNPACK(sampling_params, Itt__SamplingParams)
FUZZ_UNPACK(stream_chunk, Itt__StreamChunk)
FUZZ_UNPACK(stream_done, Itt__StreamDone)
FUZZ_UNPACK(error, Itt__Error)
FUZZ_UNPACK(cancel, Itt__Cancel)
FUZZ_UNPACK(heartbeat, Itt__Heartbeat)
FUZZ_UNPACK(stats_request, Itt__StatsRequest)
FUZZ_UNPACK(cluster_stats, Itt__ClusterStats)
FUZZ_UNPACK(worker_hello, Itt__WorkerHello)
FUZZ_UNPACK(welcome, Itt__Welcome)
FUZZ_UNPACK(session_open, Itt__SessionOpen)
FUZZ_UNPACK(step_request, Itt__StepRequest)
FUZZ_UNPACK(step_result, Itt__StepResult)
FUZZ_UNPACK(session_close, Itt__SessionClose)
FUZZ_UNPACK(logit_bias, Itt__LogitBias)
FUZZ_UNPACK(timings, Itt__Timings)
FUZZ_UNPACK(worker_stats, Itt__WorkerStats)
FUZZ_UNPACK(model_stats, Itt__ModelStats)

/* The selector byte of each type; tests/fuzz/corpus-proto uses this order. */
static ProtobufCMessage *(*const fuzz_types[])(size_t, const uint8_t *) = {
    fuzz_unpack_generate_request, /* 0 */
    fuzz_unpack_sampling_params,  /* 1 */
    fuzz_unpack_stream_chunk,     /* 2 */
    fuzz_unpack_stream_done,      /* 3 */
    fuzz_unpack_error,            /* 4 */
    fuzz_unpack_cancel,           /* 5 */
    fuzz_unpack_heartbeat,        /* 6 */
    fuzz_unpack_stats_request,    /* 7 */
    fuzz_unpack_cluster_stats,    /* 8 */
    fuzz_unpack_worker_hello,     /* 9 */
    fuzz_unpack_welcome,          /* 10 */
    fuzz_unpack_session_open,     /* 11 */
    fuzz_unpack_step_request,     /* 12 */
    fuzz_unpack_step_result,      /* 13 */
    fuzz_unpack_session_close,    /* 14 */
    fuzz_unpack_logit_bias,       /* 15 */
    fuzz_unpack_timings,          /* 16 */
    fuzz_unpack_worker_stats,     /* 17 */
    fuzz_unpack_model_stats,      /* 18 */
};

#define FUZZ_N_TYPES (sizeof fuzz_types / sizeof fuzz_types[0])

static void fuzz_sampling(const Itt__SamplingParams *p, const struct wire_limits *l)
{
	static struct sampler_bias bias[1024];
	struct sampler_params sp;
	struct itt_err err = {0};
	int rc = validate_sampling(p, 512, l, &sp, bias, sizeof bias / sizeof bias[0], &err);
	FUZZ_CHECK(rc == 0 || (rc == ITT__CODE__INVALID_ARGUMENT && err.msg[0]));
	if (rc == 0)
		FUZZ_CHECK(sp.n_bias == (p ? p->n_logit_bias : 0));
}

static void fuzz_generate(const Itt__GenerateRequest *r, const struct wire_limits *l)
{
	struct itt_err err = {0};
	int rc = validate_generate(r, l, 0, &err);
	FUZZ_CHECK(rc == 0 || (rc == ITT__CODE__INVALID_ARGUMENT && err.msg[0]));
	int rc512 = validate_generate(r, l, 512, &err);
	FUZZ_CHECK(rc512 == 0 || rc512 == ITT__CODE__INVALID_ARGUMENT);
	/* a known vocabulary can only add failures */
	FUZZ_CHECK(!(rc != 0 && rc512 == 0));
	fuzz_sampling(r->sampling, l);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wire_limits l;
	if (size < 1)
		return 0;
	wire_limits_default(&l);
	size_t type = data[0] % FUZZ_N_TYPES;
	ProtobufCMessage *m = fuzz_types[type](size - 1, data + 1);
	if (!m)
		return 0;
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(n ? n : 1);
	if (buf) {
		FUZZ_CHECK(protobuf_c_message_pack(m, buf) == n);
		/* Not required to unpack again: protobuf-c keeps an unknown field
		 * number 0 read from a multi-byte tag, then rejects it in the
		 * one-byte tag it packs it with. */
		ProtobufCMessage *again = fuzz_types[type](n, buf);
		if (again) {
			FUZZ_CHECK(protobuf_c_message_get_packed_size(again) == n);
			protobuf_c_message_free_unpacked(again, NULL);
		}
		free(buf);
	}
	if (m->descriptor == &itt__generate_request__descriptor)
		fuzz_generate((const Itt__GenerateRequest *)m, &l);
	else if (m->descriptor == &itt__sampling_params__descriptor)
		fuzz_sampling((const Itt__SamplingParams *)m, &l);
	else if (m->descriptor == &itt__session_open__descriptor)
		fuzz_sampling(((const Itt__SessionOpen *)m)->sampling, &l);
	protobuf_c_message_free_unpacked(m, NULL);
	return 0;
}
