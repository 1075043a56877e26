/* itt-convert: llama2.c checkpoint + tokenizer -> llama GGUF (F32).
 *
 * Contract: every tensor of the output is bit-identical to the source
 * floats (they are streamed from the checkpoint's mapping, never copied or
 * converted); the metadata is what llama2c_add_hparams / llama2c_add_vocab
 * describe.  The output appears atomically (OUT.tmp, then rename).
 * Exit codes: 0 done, 1 bad input or failure, 2 usage error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf-write.h"
#include "llama2c.h"
#include "opts.h"

struct convert_args {
	const char *name;
	bool sync;
};

static const struct opt convert_opts[] = {
    {"name", 0, OPT_STR, NULL, 1, 255, offsetof(struct convert_args, name), "NAME",
     "general.name (default: the checkpoint file name, no folder or extension)"},
    {"fsync", 0, OPT_FLAG, NULL, 0, 0, offsetof(struct convert_args, sync), NULL,
     "flush the file to disk before returning"},
};

static const struct opt_spec convert_spec = {
    .prog = "itt-convert",
    .usage = "CHECKPOINT.bin TOKENIZER.bin OUT.gguf [--name NAME] [--fsync]",
    .about = "\nConverts a llama2.c checkpoint (legacy export, version 0) and its\n"
             "tokenizer file into a llama GGUF with F32 tensors.",
    .opts = convert_opts,
    .n_opts = OPTS_N(convert_opts),
    .epilog = "Exit status: 0 done, 1 bad input or failure, 2 usage error.",
};

/* The checkpoint's base name without its extension, in buf. */
static const char *default_name(const char *path, char *buf, size_t cap)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	snprintf(buf, cap, "%s", base);
	char *dot = strrchr(buf, '.');
	if (dot && dot != buf)
		*dot = 0;
	return buf;
}

int main(int argc, char **argv)
{
	struct convert_args ca = {0};
	int n_pos = 0;
	int prc = opts_parse(&convert_spec, argc, argv, &ca, &n_pos);
	if (prc != OPTS_OK)
		return prc == OPTS_HELP ? 0 : 2;
	if (n_pos != 3) {
		opts_usage(&convert_spec, stderr);
		return 2;
	}
	const char *pos[3] = {argv[1], argv[2], argv[3]};
	const char *name = ca.name;
	bool sync = ca.sync;
	char name_buf[256];
	if (!name)
		name = default_name(pos[0], name_buf, sizeof name_buf);

	struct itt_err err = {0};
	llama2c_t *m = NULL;
	struct llama2c_vocab *v = NULL;
	gguf_writer_t *w = NULL;
	int rc = llama2c_open(pos[0], &m, &err);
	if (rc == 0) {
		const struct llama2c_config *c = llama2c_get_config(m);
		printf("checkpoint: dim %d, hidden %d, layers %d, heads %d, kv heads %d, vocab %d "
		       "(%s classifier), seq_len %d\n",
		       c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size,
		       c->shared_classifier ? "shared" : "separate", c->seq_len);
		rc = llama2c_vocab_load(pos[1], (uint32_t)c->vocab_size, &v, &err);
	}
	if (rc == 0)
		rc = gguf_writer_new(&w, &err);
	if (rc == 0)
		rc = llama2c_add_hparams(w, llama2c_get_config(m), name, &err);
	if (rc == 0)
		rc = llama2c_add_vocab(w, v, &err);
	if (rc == 0)
		rc = llama2c_add_tensors(w, m, &err);
	if (rc == 0)
		rc = gguf_writer_write(w, pos[2], sync, &err);
	if (rc == 0)
		printf("wrote %s: %llu tensors, %llu metadata keys, %llu bytes\n", pos[2],
		       (unsigned long long)gguf_writer_n_tensors(w),
		       (unsigned long long)gguf_writer_n_kv(w),
		       (unsigned long long)gguf_writer_file_size(w));
	else
		fprintf(stderr, "itt-convert: %s (%s)\n", err.msg, itt_strerror(rc));
	gguf_writer_destroy(&w);
	llama2c_vocab_destroy(&v);
	llama2c_close(&m);
	return rc == 0 ? 0 : 1;
}
