/* err: the engine's error table. */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

const char *itt_strerror(int code)
{
	switch (code) {
	case ITT_OK: return "ok";
	case ITT_E_IO: return "i/o error";
	case ITT_E_FORMAT: return "format error";
	case ITT_E_UNSUPPORTED: return "unsupported";
	case ITT_E_NOMEM: return "out of memory";
	case ITT_E_INVALID: return "invalid argument";
	case ITT_E_NOTFOUND: return "not found";
	case ITT_E_RANGE: return "out of range";
	case ITT_E_FULL: return "resource exhausted";
	}
	return "unknown error";
}

int itt_err_set(struct itt_err *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
	}
	return code;
}
