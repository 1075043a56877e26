/* testutil: shared helpers for the cmocka unit tests. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *tu_model_path(const char *file)
{
	static char buf[8][4096];
	static int next;
	const char *dir = getenv("ITT_MODEL_DIR");
	if (!dir || !*dir) {
		fprintf(stderr, "SKIP: ITT_MODEL_DIR is not set; %s is needed\n", file);
		return NULL;
	}
	char *p = buf[next++ % 8];
	snprintf(p, sizeof buf[0], "%s/%s", dir, file);
	if (access(p, R_OK) != 0) {
		fprintf(stderr, "SKIP: model file %s is missing\n", p);
		return NULL;
	}
	return p;
}

const char *tu_tmp_path(const char *name)
{
	static char buf[8][4096];
	static int next;
	const char *dir = getenv("ITT_TMP_DIR");
	char *p = buf[next++ % 8];
	snprintf(p, sizeof buf[0], "%s/%d-%s", dir && *dir ? dir : "/tmp", (int)getpid(), name);
	return p;
}

void *tu_read_file(const char *path, size_t *size)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *buf = malloc(n > 0 ? (size_t)n : 1);
	if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	if (buf)
		*size = (size_t)n;
	return buf;
}

int tu_write_file(const char *path, const void *buf, size_t size)
{
	FILE *f = fopen(path, "wb");
	if (!f)
		return -1;
	size_t w = fwrite(buf, 1, size, f);
	return fclose(f) == 0 && w == size ? 0 : -1;
}
