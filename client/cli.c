/* cli: the options of itt generate, shared number parsing and JSON output
 * for the itt subcommands. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>


void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* --- itt generate ------------------------------------------------------------ */

static int gen_seed(void *out, const char *v, char *reason, size_t cap)
{
	struct gen_opts *o = out;
	char *end;
	errno = 0;
	unsigned long long s = strtoull(v, &end, 10);
	if (*v < '0' || *v > '9' || *end || errno) {
		snprintf(reason, cap, "expected an integer in [0, 18446744073709551615]");
		return -1;
	}
	o->sp.seed = s;
	o->seed_set = true;
	return 0;
}

static int gen_stop(void *out, const char *v, char *reason, size_t cap)
{
	struct gen_opts *o = out;
	if (o->n_stops == CLI_MAX_STOPS) {
		snprintf(reason, cap, "at most %d stop strings", CLI_MAX_STOPS);
		return -1;
	}
	o->stops[o->n_stops++] = v;
	return 0;
}

#define GEN_AT(f) offsetof(struct gen_opts, f)

/* The sampling defaults are sampler_params_default()'s (llama.cpp's). */
static const struct opt gen_opts_table[] = {
	{"local", 0, OPT_STR, NULL, 1, 4096, GEN_AT(local), "MODEL.gguf",
	 "run the engine in this process"},
	{"broker", 0, OPT_STR, NULL, 1, 4096, GEN_AT(broker), "ENDPOINT",
	 "ask a cluster (e.g. tcp://127.0.0.1:5555); the text streams"},
	{"model", 0, OPT_STR, NULL, 1, 4096, GEN_AT(model), "NAME", "the model at the broker"},
	{"prompt", 'p', OPT_STR, "", 0, 1e9, GEN_AT(prompt), "TEXT", "the prompt"},
	{"max-tokens", 'n', OPT_INT, "128", 0, 1 << 20, GEN_AT(n_predict), NULL,
	 "generate at most N tokens"},
	{"temperature", 0, OPT_FLOAT, "0.8", CLI_ANY_LO, CLI_ANY_HI, GEN_AT(sp.temperature), "T",
	 "<= 0: greedy"},
	{"temp", 0, OPT_FLOAT, NULL, CLI_ANY_LO, CLI_ANY_HI, GEN_AT(sp.temperature), "T",
	 "--temperature", .flags = OPT_HIDDEN},
	{"top-k", 0, OPT_INT, "40", -1, 1 << 30, GEN_AT(sp.top_k), "K", "<= 0: off"},
	{"top-p", 0, OPT_FLOAT, "0.95", CLI_ANY_LO, CLI_ANY_HI, GEN_AT(sp.top_p), "P",
	 "in (0, 1]; 1: off"},
	{"min-p", 0, OPT_FLOAT, "0.05", CLI_ANY_LO, CLI_ANY_HI, GEN_AT(sp.min_p), "P",
	 "in [0, 1]; 0: off"},
	{"typical", 0, OPT_FLOAT, "1", CLI_ANY_LO, CLI_ANY_HI, GEN_AT(sp.typical_p), "P",
	 "in (0, 1]; 1: off"},
	{"repeat-penalty", 0, OPT_FLOAT, "1", CLI_ANY_LO, CLI_ANY_HI, GEN_AT(sp.repeat_penalty),
	 "R", "> 0; 1: off"},
	{"repeat-last-n", 0, OPT_INT, "64", -1, 1 << 30, GEN_AT(sp.penalty_last_n), NULL,
	 "the penalties' window; 0: off, -1: everything"},
	{"presence-penalty", 0, OPT_FLOAT, "0", CLI_ANY_LO, CLI_ANY_HI,
	 GEN_AT(sp.presence_penalty), "X", "0: off"},
	{"frequency-penalty", 0, OPT_FLOAT, "0", CLI_ANY_LO, CLI_ANY_HI,
	 GEN_AT(sp.frequency_penalty), "X", "0: off"},
	{"seed", 0, OPT_FN, NULL, 0, 0, 0, "S", "sampling seed (default random, and reported)",
	 gen_seed},
	{"stop", 0, OPT_FN, NULL, 0, 0, 0, "STR", "stop at this text (repeatable, at most 8)",
	 gen_stop},
	{"threads", 't', OPT_INT, "1", 1, 256, GEN_AT(threads), NULL,
	 "compute threads (--local)"},
	{"act-quant", 0, OPT_SWITCH, "on", 0, 0, GEN_AT(act_quant), NULL,
	 "quantised weights: integer products on 8-bit activations as llama.cpp (--local)"},
	{"json", 0, OPT_FLAG, NULL, 0, 0, GEN_AT(json), NULL, "print one JSON object"},
	CLUSTER_CONN_OPTS(struct gen_opts, co, "30000",
			  "give up when the broker is silent this long"),
	CLUSTER_REQ_OPTS(struct gen_opts, co, 0),
	/* techniques */
	{"guidance-heads", 0, OPT_STR, NULL, 1, 1e6, GEN_AT(tech.heads), "L:H,...",
	 "perturb these attention heads in a guidance branch"},
	{"head-set", 0, OPT_STR, NULL, 1, 4096, GEN_AT(tech.head_set), "X",
	 "a head-set: a file (--local), a name in the broker's --head-sets"},
	{"guidance-scale", 0, OPT_FLOAT, "0", CLI_ANY_LO, CLI_ANY_HI, GEN_AT(tech.scale), "S",
	 "guided logits l + s (l - l_branch); 0: off"},
	{"guidance-blend", 0, OPT_FLOAT, "1", CLI_ANY_LO, CLI_ANY_HI, GEN_AT(tech.blend), "U",
	 "the perturbed heads attend to (1-U)A + U I"},
	{"negative-prompt", 0, OPT_STR, NULL, 0, 1e9, GEN_AT(tech.negative_prompt), "TEXT",
	 "classifier-free guidance: the branch is this prompt"},
	{"early-exit", 0, OPT_FLOAT, NULL, 0, CLI_ANY_HI, GEN_AT(tech.exit_threshold), "T",
	 "stop a token's layers when top-1 minus top-2 probability >= T"},
	{"exit-layers", 0, OPT_STR, NULL, 1, 4096, GEN_AT(tech.exit_layers), "L,...",
	 "the layers after which --early-exit may stop"},
	{"compare", 0, OPT_FLAG, NULL, 0, 0, GEN_AT(tech.compare), NULL,
	 "(--local) also run the full model: report agreement"},
	{"chat", 0, OPT_FLAG, NULL, 0, 0, GEN_AT(chat), NULL,
	 "chat: the prompt is a user message, rendered with the model's chat template"},
	{"system", 0, OPT_STR, NULL, 0, 1e9, GEN_AT(system), "TEXT",
	 "(--chat) a system message before the conversation"},
	{"messages", 0, OPT_STR, NULL, 1, 4096, GEN_AT(messages_file), "FILE",
	 "(implies --chat) the conversation: a JSON array of {\"role\", \"content\"}"},
	{"chat-template", 0, OPT_STR, NULL, 1, 32, GEN_AT(chat_template), "NAME",
	 "(--chat) render with this template, not the model's (chatml, llama3, ...)"},
	{"speculative", 0, OPT_STR, NULL, 1, 64, GEN_AT(tech.draft), "ngram|exit",
	 "(--broker) speculative decoding: n-gram or early-exit drafts"},
	{"draft", 0, OPT_LONG, NULL, 0, 1000000, GEN_AT(tech.max_draft), NULL,
	 "(--broker) at most N drafts a step, 1..16 (default 4)"},
	{"exit-draft-layers", 0, OPT_LONG, NULL, 1, 1000000, GEN_AT(tech.exit_draft_layers), "K",
	 "(--broker) layers of an exit draft, 1..n_layers-1"},
};

static const struct opt_spec gen_spec = {
	.prog = "itt generate",
	.usage = "(--local MODEL.gguf | --broker ENDPOINT --model NAME) [options]",
	.about = "\n"
		 "Prints the prompt and its continuation (at most N tokens; generation also\n"
		 "stops at end-of-sequence, a stop string or the context length). Sampling\n"
		 "follows llama.cpp's chain and defaults: penalties, top-k, typical, top-p,\n"
		 "min-p, temperature. Without --seed a random seed is used and reported.\n"
		 "--json prints one object: prompt, prompt_tokens (ids, BOS included), tokens,\n"
		 "text, stop_reason, seed and timings.\n"
		 "With --broker the request goes to a cluster for the model NAME and the text is\n"
		 "printed as it arrives; --threads does not apply. An ERROR from the cluster\n"
		 "prints \"itt generate: CODE: reason\" and exits 1.",
	.opts = gen_opts_table,
	.n_opts = OPTS_N(gen_opts_table),
	.epilog = "Chat: --chat sends the prompt as a user message (after --system and the\n"
		  "messages of --messages FILE); the worker (or --local) renders them with the\n"
		  "model's chat template, or --chat-template NAME (chatml, llama2, llama3,\n"
		  "llama3.1, mistral-v1, mistral-v3, mistral-v3-tekken, mistral-v7,\n"
		  "mistral-v7-tekken, gemma, phi3, granite), and generation ends at the end of\n"
		  "the assistant's turn; only the reply is printed. A model without a template\n"
		  "uses chatml; one whose template is not recognised needs --chat-template.\n"
		  "With --json a chat's object has messages instead of prompt (--broker), or\n"
		  "messages, the rendered prompt and chat_template (--local).\n"
		  "Inference-time techniques: PROTOCOL.md \"Techniques\". --early-exit needs\n"
		  "--exit-layers (whole-model workers); --api-key, --client-id, --timeout-ms,\n"
		  "--tenant, --priority and --deadline-ms apply to --broker.",
};

static void gen_free_msgs(struct gen_opts *o)
{
	for (size_t i = 0; i < o->n_msgs; i++) {
		free(o->msgs[i].role);
		free(o->msgs[i].content);
	}
	free(o->msgs);
	o->msgs = NULL;
	o->n_msgs = 0;
}

static int gen_push_msg(struct gen_opts *o, const char *role, const char *content, size_t len)
{
	struct gen_msg *m = realloc(o->msgs, (o->n_msgs + 1) * sizeof *m);
	if (!m)
		return -1;
	o->msgs = m;
	m += o->n_msgs;
	m->role = strdup(role);
	m->content = malloc(len + 1);
	if (!m->role || !m->content) {
		free(m->role);
		free(m->content);
		return -1;
	}
	memcpy(m->content, content, len);
	m->content[len] = 0;
	o->n_msgs++;
	return 0;
}

/* Builds o->msgs: --system, the messages of --messages FILE, then the
 * prompt (when not empty) as a user message.  0, or -1 after printing why.
 * Roles and order are checked where the conversation is rendered. */
static int gen_conversation(struct gen_opts *o)
{
	json_error_t je;
	json_t *a = NULL;
	const char *why = NULL;
	char buf[300];

	if (o->system && gen_push_msg(o, "system", o->system, strlen(o->system)) < 0)
		goto oom;
	if (o->messages_file) {
		if (!(a = json_load_file(o->messages_file, 0, &je))) {
			fprintf(stderr, "itt generate: --messages %s: line %d: %s\n",
			        o->messages_file, je.line, je.text);
			goto fail;
		}
		if (!json_is_array(a))
			why = "expected a JSON array of {\"role\", \"content\"} objects";
		for (size_t i = 0; !why && i < json_array_size(a); i++) {
			json_t *m = json_array_get(a, i);
			json_t *role = json_object_get(m, "role"),
			       *content = json_object_get(m, "content");
			if (!json_is_object(m) || !json_is_string(role) ||
			    !json_is_string(content)) {
				snprintf(buf, sizeof buf,
				         "element %zu is not an object with string \"role\" and "
				         "\"content\"",
				         i);
				why = buf;
			} else if (o->system && !strcmp(json_string_value(role), "system")) {
				why = "--system and a system message in the file are exclusive";
			} else if (gen_push_msg(o, json_string_value(role),
			                        json_string_value(content),
			                        json_string_length(content)) < 0) {
				goto oom;
			}
		}
		if (why) {
			fprintf(stderr, "itt generate: --messages %s: %s\n", o->messages_file, why);
			goto fail;
		}
		json_decref(a);
		a = NULL;
	}
	if (*o->prompt && gen_push_msg(o, "user", o->prompt, strlen(o->prompt)) < 0)
		goto oom;
	if (!o->n_msgs || (o->n_msgs == 1 && o->system)) {
		fprintf(stderr, "itt generate: --chat needs a prompt or --messages FILE\n");
		goto fail;
	}
	return 0;
oom:
	fprintf(stderr, "itt generate: out of memory\n");
fail:
	json_decref(a);
	gen_free_msgs(o);
	return -1;
}

json_t *gen_json_messages(const struct gen_opts *o)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < o->n_msgs; i++) {
		json_t *m = json_object();
		json_object_set_new(m, "role", cli_json_str(o->msgs[i].role));
		json_object_set_new(m, "content", cli_json_str(o->msgs[i].content));
		json_array_append_new(a, m);
	}
	return a;
}

/* OPTS_OK, OPTS_HELP or OPTS_ERROR (a line on stderr). */
static int parse_gen(int argc, char **argv, struct gen_opts *o)
{
	memset(o, 0, sizeof *o);
	sampler_params_default(&o->sp);
	o->tech.exit_threshold = -1.0f;
	o->tech.max_draft = -1;
	int rc = opts_parse(&gen_spec, argc, argv, o, NULL);
	if (rc != OPTS_OK)
		return rc;
	const char *why = NULL;
	if (o->local && o->broker)
		why = "--local and --broker are exclusive";
	else if (!o->local && !o->broker)
		why = "--local MODEL.gguf or --broker ENDPOINT is required";
	else if (o->broker && !o->model)
		why = "--broker ENDPOINT needs --model NAME";
	else if (o->local && (o->tech.draft || o->tech.max_draft >= 0 || o->tech.exit_draft_layers))
		why = "--speculative, --draft and --exit-draft-layers need --broker";
	else if (o->local &&
		 (o->co.client_id || o->co.tenant || o->co.priority || o->co.deadline_ms))
		why = "--client-id, --tenant, --priority and --deadline-ms need --broker";
	else if (!o->chat && !o->messages_file && (o->system || o->chat_template))
		why = "--system and --chat-template need --chat";
	if (why) {
		fprintf(stderr, "itt generate: %s (see --help)\n", why);
		return OPTS_ERROR;
	}
	if (o->messages_file)
		o->chat = true;
	if (o->chat && gen_conversation(o) < 0)
		return OPTS_ERROR;
	return OPTS_OK;
}

int cmd_generate(int argc, char **argv)
{
	struct gen_opts o;
	int rc = parse_gen(argc, argv, &o);
	if (rc != OPTS_OK)
		return cli_exit(rc);
	rc = o.broker ? cmd_generate_broker(&o) : cmd_generate_local(&o);
	gen_free_msgs(&o);
	return rc;
}

/* --- JSON ---------------------------------------------------------------------- */

#define CLI_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

/* Length of a valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	size_t len;
	unsigned min;
	if (s[0] < 0x80)
		return 1;
	if ((s[0] & 0xE0) == 0xC0)
		len = 2, min = 0x80;
	else if ((s[0] & 0xF0) == 0xE0)
		len = 3, min = 0x800;
	else if ((s[0] & 0xF8) == 0xF0)
		len = 4, min = 0x10000;
	else
		return 0;
	if (len > n)
		return 0;
	unsigned cp = s[0] & (0x7F >> len);
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

json_t *cli_json_text(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t bad = 0;
	for (size_t i = 0, n; i < len; i += n ? n : 1)
		bad += (n = utf8_len(p + i, len - i)) == 0;
	if (!bad)
		return json_stringn(s, len);
	/* each invalid byte becomes U+FFFD (3 bytes) */
	char *t = malloc(len + 2 * bad + 1);
	if (!t)
		return NULL;
	size_t k = 0;
	for (size_t i = 0, n; i < len; i += n ? n : 1) {
		n = utf8_len(p + i, len - i);
		if (n) {
			memcpy(t + k, p + i, n);
			k += n;
		} else {
			memcpy(t + k, "\xEF\xBF\xBD", 3);
			k += 3;
		}
	}
	json_t *j = json_stringn(t, k);
	free(t);
	return j;
}

json_t *cli_json_str(const char *s)
{
	return cli_json_text(s ? s : "", s ? strlen(s) : 0);
}

json_t *cli_json_ids(const int32_t *ids, size_t n)
{
	json_t *a = json_array();
	for (size_t i = 0; a && i < n; i++)
		json_array_append_new(a, json_integer(ids[i]));
	return a;
}

json_t *cli_json_num(double v, const char *fmt)
{
	char buf[64];
	if (!isfinite(v))
		return json_null();
	snprintf(buf, sizeof buf, fmt, v);
	return json_real(strtod(buf, NULL));
}

/* jansson's integers are signed 64-bit: a cli_json_u64 above INT64_MAX is
 * a real placeholder remembered here, and cli_json_print writes its value
 * exactly.  The table is emptied by every cli_json_print. */
static struct json_big {
	const json_t *j;
	uint64_t v;
} json_big[16];
static size_t n_json_big;

json_t *cli_json_u64(uint64_t v)
{
	if (v <= (uint64_t)INT64_MAX)
		return json_integer((json_int_t)v);
	json_t *j = json_real((double)v);
	if (j && n_json_big < sizeof json_big / sizeof json_big[0])
		json_big[n_json_big++] = (struct json_big){j, v};
	return j;
}

/* json_dumpf, except for the values in json_big. */
static int json_write(const json_t *j, FILE *f)
{
	const char *key;
	json_t *v;
	size_t i;
	for (i = 0; i < n_json_big; i++)
		if (json_big[i].j == j && json_is_real(j) &&
		    json_real_value(j) == (double)json_big[i].v)
			return fprintf(f, "%llu", (unsigned long long)json_big[i].v) < 0 ? -1 : 0;
	if (json_is_object(j)) {
		int rc = fputc('{', f) == EOF ? -1 : 0;
		bool first = true;
		json_object_foreach((json_t *)j, key, v) {
			json_t *k = json_string(key);
			if (!first)
				fputc(',', f);
			first = false;
			rc |= json_dumpf(k, f, CLI_JSON_FLAGS | JSON_ENCODE_ANY);
			json_decref(k);
			fputc(':', f);
			rc |= json_write(v, f);
		}
		return rc | (fputc('}', f) == EOF ? -1 : 0);
	}
	if (json_is_array(j)) {
		int rc = fputc('[', f) == EOF ? -1 : 0;
		json_array_foreach(j, i, v) {
			if (i)
				fputc(',', f);
			rc |= json_write(v, f);
		}
		return rc | (fputc(']', f) == EOF ? -1 : 0);
	}
	return json_dumpf(j, f, CLI_JSON_FLAGS | JSON_ENCODE_ANY);
}

int cli_json_print(json_t *v, FILE *f)
{
	int rc = -1;
	if (v) {
		rc = n_json_big ? json_write(v, f)
				: json_dumpf(v, f, CLI_JSON_FLAGS | JSON_ENCODE_ANY);
		rc |= fputc('\n', f) == EOF ? -1 : 0;
		json_decref(v);
	}
	n_json_big = 0;
	return rc;
}
