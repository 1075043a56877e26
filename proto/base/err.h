/* err: one table of engine error codes and a small error record.
 *
 * Every fallible engine call returns 0 or a negative ITT_E_* code and, when
 * given a struct itt_err, fills it with the code and a message that names
 * the offending field or call. Callers may pass NULL for the record. */
#ifndef ITT_ERR_H
#define ITT_ERR_H

#include <stddef.h>

enum itt_errcode {
	ITT_OK = 0,
	ITT_E_IO = -1,          /* open/read/mmap/write failed */
	ITT_E_FORMAT = -2,      /* malformed or truncated input */
	ITT_E_UNSUPPORTED = -3, /* well-formed but not supported (type, arch) */
	ITT_E_NOMEM = -4,       /* allocation failed or limit reached */
	ITT_E_INVALID = -5,     /* invalid argument from the caller */
	ITT_E_NOTFOUND = -6,    /* key or tensor absent */
	ITT_E_RANGE = -7,       /* value out of its allowed range */
	ITT_E_FULL = -8,        /* a bounded resource is exhausted */
};

#define ITT_ERR_MSG 512

struct itt_err {
	int code;
	char msg[ITT_ERR_MSG];
};

/* Name of a code ("format error", ...); never NULL. */
const char *itt_strerror(int code);

/* Sets *err (if not NULL) and returns code, so callers can write
 * `return itt_err_set(err, ITT_E_FORMAT, "tensor %s: ...", name);`. */
int itt_err_set(struct itt_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
