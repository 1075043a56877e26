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

static void usage(FILE *f)
{
	fprintf(f, "usage: itt-convert CHECKPOINT.bin TOKENIZER.bin OUT.gguf [--name NAME] "
	           "[--fsync]\n"
	           "\n"
	           "Converts a llama2.c checkpoint (legacy export, version 0) and its\n"
	           "tokenizer file into a llama GGUF with F32 tensors.\n"
	           "\n"
	           "  --name NAME  general.name (default: the checkpoint's file name without\n"
	           "               directory and extension)\n"
	           "  --fsync      flush the file to disk before returning\n"
	           "  -h, --help   this text\n"
	           "\n"
	           "Exit status: 0 done, 1 bad input or failure, 2 usage error.\n");
}

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
	const char *pos[3];
	int n_pos = 0;
	const char *name = NULL;
	bool sync = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[i], "--name") == 0) {
			if (i + 1 >= argc || !*argv[i + 1]) {
				fprintf(stderr, "itt-convert: --name needs a non-empty value\n");
				return 2;
			}
			name = argv[++i];
		} else if (strcmp(argv[i], "--fsync") == 0) {
			sync = true;
		} else if (argv[i][0] == '-' && argv[i][1]) {
			fprintf(stderr, "itt-convert: unknown option %s (try --help)\n", argv[i]);
			return 2;
		} else if (n_pos < 3) {
			pos[n_pos++] = argv[i];
		} else {
			fprintf(stderr, "itt-convert: unexpected argument %s (try --help)\n",
			        argv[i]);
			return 2;
		}
	}
	if (n_pos != 3) {
		usage(stderr);
		return 2;
	}
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
