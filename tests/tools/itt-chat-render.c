/* itt-chat-render: drives the chat templates (worker/engine/chat.c) for
 * tests/integration/test_chat_templates.py.
 *
 *   itt-chat-render --detect FILE...
 *       one line per file: the file, a tab, the family it is detected as
 *       ("unknown" when none).
 *   itt-chat-render (--file FILE | --name NAME) [--bos TEXT] [--eos TEXT]
 *                   ROLE CONTENT [ROLE CONTENT ...]
 *       writes the rendering of the conversation (with the generation
 *       prompt) to stdout, byte for byte; on a refusal, the reason on
 *       stderr and exit status 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"

static char *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n = 0, got;
	if (!f)
		return NULL;
	do {
		if (n + 4096 > cap) {
			char *p = realloc(buf, cap = 2 * cap + 4096);
			if (!p) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = p;
		}
		got = fread(buf + n, 1, cap - n, f);
		n += got;
	} while (got);
	fclose(f);
	*len = n;
	return buf;
}

int main(int argc, char **argv)
{
	struct chat_template t;
	struct itt_err err = {0};
	const char *bos = NULL, *eos = NULL;
	int i = 1;

	if (argc > 1 && !strcmp(argv[1], "--detect")) {
		for (i = 2; i < argc; i++) {
			size_t len;
			char *text = slurp(argv[i], &len);
			if (!text) {
				fprintf(stderr, "itt-chat-render: cannot read %s\n", argv[i]);
				return 1;
			}
			chat_template_detect(text, len, &t);
			printf("%s\t%s\n", argv[i], chat_template_name(&t));
			free(text);
		}
		return 0;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: itt-chat-render (--file FILE | --name NAME) [--bos TEXT] "
		                "[--eos TEXT] ROLE CONTENT ...\n       itt-chat-render --detect "
		                "FILE...\n");
		return 2;
	}
	if (!strcmp(argv[1], "--file")) {
		size_t len;
		char *text = slurp(argv[2], &len);
		if (!text) {
			fprintf(stderr, "itt-chat-render: cannot read %s\n", argv[2]);
			return 1;
		}
		chat_template_detect(text, len, &t);
		free(text);
	} else if (!strcmp(argv[1], "--name")) {
		if (chat_template_by_name(argv[2], &t, &err) < 0) {
			fprintf(stderr, "itt-chat-render: %s\n", err.msg);
			return 1;
		}
	} else {
		fprintf(stderr, "itt-chat-render: expected --file or --name\n");
		return 2;
	}
	for (i = 3; i + 1 < argc && !strncmp(argv[i], "--", 2); i += 2) {
		if (!strcmp(argv[i], "--bos"))
			bos = argv[i + 1];
		else if (!strcmp(argv[i], "--eos"))
			eos = argv[i + 1];
		else
			break;
	}
	if ((argc - i) % 2) {
		fprintf(stderr, "itt-chat-render: messages come as ROLE CONTENT pairs\n");
		return 2;
	}
	size_t n = (size_t)(argc - i) / 2;
	struct chat_msg *m = calloc(n ? n : 1, sizeof *m);
	if (!m)
		return 1;
	for (size_t k = 0; k < n; k++)
		m[k] = (struct chat_msg){argv[i + 2 * k], argv[i + 2 * k + 1]};
	char *out;
	size_t len;
	if (chat_render(&t, m, n, bos, eos, &out, &len, &err) < 0) {
		fprintf(stderr, "itt-chat-render: %s\n", err.msg);
		free(m);
		return 1;
	}
	fwrite(out, 1, len, stdout);
	free(out);
	free(m);
	return 0;
}
