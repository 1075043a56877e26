/* testutil: shared helpers for the cmocka unit tests. */
#ifndef ITT_TESTUTIL_H
#define ITT_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

/* Path of a file in ITT_MODEL_DIR, or NULL (after printing why) when the
 * variable is unset or the file is missing; callers then skip(). */
const char *tu_model_path(const char *file);
/* A fresh path under ITT_TMP_DIR (or /tmp) for scratch files. */
const char *tu_tmp_path(const char *name);
/* Reads a whole file into a malloc'd buffer; NULL on failure. */
void *tu_read_file(const char *path, size_t *size);
int tu_write_file(const char *path, const void *buf, size_t size);

#endif
