/* peer-tokenize: llama.cpp's tokenizer on texts, for the differential part
 * of tests/integration/test_vocab_peer.py.  Not part of the CMake build:
 * that test compiles it against a llama.cpp build (include/llama.h,
 * build/bin/libllama.so) when one is there.
 *
 *   peer-tokenize VOCAB.gguf FLAGS < texts
 *
 * stdin: texts separated by NUL bytes; stdout: one line of ids per text
 * (" id id ..."), tokenized with add_special = FLAGS & 1 and parse_special
 * = FLAGS & 2, like itt-tokenize's --bos and --special. */
#include <stdio.h>
#include <stdlib.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *user)
{
	(void)level;
	(void)text;
	(void)user;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: peer-tokenize VOCAB.gguf FLAGS < NUL-separated texts\n");
		return 2;
	}
	llama_log_set(quiet, NULL);
	llama_backend_init();
	struct llama_model_params p = llama_model_default_params();
	p.vocab_only = true;
	struct llama_model *m = llama_model_load_from_file(argv[1], p);
	if (!m) {
		fprintf(stderr, "peer-tokenize: cannot load %s\n", argv[1]);
		return 1;
	}
	const struct llama_vocab *v = llama_model_get_vocab(m);
	int flags = atoi(argv[2]);
	size_t cap = 1 << 16, n = 0;
	int32_t max_ids = 1 << 20;
	char *buf = malloc(cap);
	llama_token *ids = malloc(sizeof *ids * (size_t)max_ids);
	if (!buf || !ids)
		return 1;
	for (;;) {
		int c = getchar();
		if (c == EOF || c == 0) {
			if (c == EOF && n == 0)
				break;
			int k = llama_tokenize(v, buf, (int32_t)n, ids, max_ids, flags & 1,
			                       (flags & 2) != 0);
			for (int i = 0; i < k; i++)
				printf(" %d", ids[i]);
			putchar('\n');
			n = 0;
			if (c == EOF)
				break;
			continue;
		}
		if (n == cap) {
			char *bigger = realloc(buf, cap *= 2);
			if (!bigger)
				return 1;
			buf = bigger;
		}
		buf[n++] = (char)c;
	}
	free(buf);
	free(ids);
	llama_model_free(m);
	return 0;
}
