/* itt-tokenize: drives the C tokenizer for the reference tests.
 *
 *   itt-tokenize [--bos] [--special] MODEL.gguf
 *   itt-tokenize [--bos] --llama2c TOKENIZER.bin
 *   itt-tokenize --inp CASES.inp MODEL.gguf
 *   itt-tokenize --decode MODEL.gguf
 *   itt-tokenize --info MODEL.gguf
 *
 * Each line of stdin is one JSON string (so texts may hold newlines); the
 * escapes \uDC80..\uDCFF, lone low surrogates, stand for the raw bytes
 * 0x80..0xFF (Python's "surrogateescape"), so any byte string can be sent.
 * For each line one line of space-separated token ids is printed.  --bos
 * asks for BOS (added when the vocabulary adds one), --special parses the
 * text of special tokens.  Exit status 1 on a bad file or a malformed line
 * (named on stderr).
 *
 * --inp reads llama.cpp's test-tokenizer-0 input instead of stdin: cases
 * separated by the line "__ggml_vocab_test__", encoded as that test does
 * (no BOS, no special tokens), one line of ids per case in its .out format
 * (" id id ...").  --decode reads lines of ids on stdin and prints, per
 * line, the concatenated tokenizer_decode_piece bytes as one JSON string
 * (bytes that are not UTF-8 as \uDC80..\uDCFF).  --info prints one JSON
 * object: n_vocab, bos, eos, eot, add_bos and the end-of-generation ids.
 *
 * A llama2.c tokenizer file is: int32 max_token_length, then per token a
 * float32 score, an int32 length and the bytes, up to the end of the file.
 * Its exporter wrote U+2581 as ' ' and ids 1 and 2 as "\n<s>\n" and
 * "\n</s>\n"; this tool undoes both, types id 0 UNKNOWN, ids 1 and 2
 * CONTROL, <0xXX> BYTE and the rest NORMAL, and sets bos 1, eos 2, unk 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "tokenizer.h"

static int die(const char *what, const struct itt_err *err)
{
	fprintf(stderr, "itt-tokenize: %s: %s (%s)\n", what, err->msg, itt_strerror(err->code));
	return 1;
}

/* Reads a llama2.c tokenizer file and builds the tokenizer from it. */
static int llama2c_load(const char *path, tokenizer_t **out, struct itt_err *err)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return itt_err_set(err, ITT_E_IO, "cannot open %s", path);
	long fsize = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
	size_t size = fsize > 0 && fsize < (1l << 30) ? (size_t)fsize : 0;
	unsigned char *buf = size ? malloc(size) : NULL;
	bool ok = buf && fseek(f, 0, SEEK_SET) == 0 && fread(buf, 1, size, f) == size;
	fclose(f);
	if (!ok) {
		free(buf);
		return itt_err_set(err, ITT_E_IO, "%s: cannot read it (empty or over 1 GiB?)",
		                   path);
	}

	/* Count tokens, checking every length against the bytes left. */
	size_t ntok = 0, conv_bytes = 0;
	int rc = 0;
	if (size < 4)
		rc = itt_err_set(err, ITT_E_FORMAT, "%s: no max_token_length header", path);
	for (size_t off = 4; rc == 0 && off < size; ntok++) {
		int32_t len;
		if (size - off < 8) {
			rc = itt_err_set(err, ITT_E_FORMAT, "%s: token %zu: truncated header", path,
			                 ntok);
			break;
		}
		memcpy(&len, buf + off + 4, 4);
		off += 8;
		if (len < 0 || (size_t)len > size - off)
			rc = itt_err_set(err, ITT_E_FORMAT, "%s: token %zu: length %d is bad", path,
			                 ntok, (int)len);
		else
			off += (size_t)len;
		conv_bytes += 3 * (size_t)(len > 0 ? len : 0);
	}
	struct gguf_str *tokens = rc ? NULL : calloc(ntok + 1, sizeof *tokens);
	float *scores = rc ? NULL : calloc(ntok + 1, sizeof *scores);
	int32_t *types = rc ? NULL : calloc(ntok + 1, sizeof *types);
	char *conv = rc ? NULL : malloc(conv_bytes + 1);
	if (rc == 0 && (!tokens || !scores || !types || !conv))
		rc = itt_err_set(err, ITT_E_NOMEM, "%s: out of memory", path);

	size_t off = 4, c = 0;
	for (size_t i = 0; rc == 0 && i < ntok; i++) {
		int32_t len;
		memcpy(&scores[i], buf + off, 4);
		memcpy(&len, buf + off + 4, 4);
		off += 8;
		const char *s = (const char *)buf + off;
		size_t n = (size_t)len;
		off += n;
		if (i == 1 || i == 2) {
			while (n > 0 && *s == '\n') {
				s++;
				n--;
			}
			while (n > 0 && s[n - 1] == '\n')
				n--;
		}
		tokens[i] = (struct gguf_str){n, s};
		types[i] = i == 0   ? TOKENIZER_TYPE_UNKNOWN
		           : i <= 2 ? TOKENIZER_TYPE_CONTROL
		                    : TOKENIZER_TYPE_NORMAL;
		if (i > 2 && n == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>') {
			types[i] = TOKENIZER_TYPE_BYTE;
		} else if (i > 2 && memchr(s, ' ', n)) {
			char *d = conv + c;
			for (size_t k = 0; k < n; k++) {
				if (s[k] == ' ') {
					memcpy(conv + c, "\xe2\x96\x81", 3);
					c += 3;
				} else {
					conv[c++] = s[k];
				}
			}
			tokens[i] = (struct gguf_str){(uint64_t)(conv + c - d), d};
		}
	}
	if (rc == 0) {
		struct tokenizer_vocab v = {
		    .n = (uint32_t)ntok,
		    .tokens = tokens,
		    .scores = scores,
		    .types = types,
		    .bos = ntok > 1 ? 1 : -1,
		    .eos = ntok > 2 ? 2 : -1,
		    .unk = 0,
		    .add_space_prefix = true,
		};
		rc = ntok > UINT32_MAX ? itt_err_set(err, ITT_E_RANGE, "%s: too many tokens", path)
		                       : tokenizer_new_from_vocab(&v, out, err);
	}
	free(buf);
	free(tokens);
	free(scores);
	free(types);
	free(conv);
	return rc;
}

static int hex4(const char *s, unsigned *v)
{
	*v = 0;
	for (int i = 0; i < 4; i++) {
		char c = s[i];
		int d = c >= '0' && c <= '9'   ? c - '0'
		        : c >= 'a' && c <= 'f' ? c - 'a' + 10
		        : c >= 'A' && c <= 'F' ? c - 'A' + 10
		                               : -1;
		if (d < 0)
			return -1;
		*v = *v * 16 + (unsigned)d;
	}
	return 0;
}

static size_t put_utf8(char *d, unsigned cp)
{
	if (cp < 0x80) {
		d[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		d[0] = (char)(0xc0 | cp >> 6);
		d[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		d[0] = (char)(0xe0 | cp >> 12);
		d[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		d[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	d[0] = (char)(0xf0 | cp >> 18);
	d[1] = (char)(0x80 | (cp >> 12 & 0x3f));
	d[2] = (char)(0x80 | (cp >> 6 & 0x3f));
	d[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

/* Decodes the JSON string in line[0..n) into out (at least n bytes); the
 * decoded length, or -1 when the line is not one JSON string. */
static long json_unquote(const char *line, size_t n, char *out)
{
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
		n--;
	if (n < 2 || line[0] != '"' || line[n - 1] != '"')
		return -1;
	size_t w = 0;
	for (size_t i = 1; i < n - 1;) {
		char c = line[i++];
		if (c == '"')
			return -1;
		if (c != '\\') {
			out[w++] = c;
			continue;
		}
		if (i >= n - 1)
			return -1;
		c = line[i++];
		const char *simple = strchr("\"\\/bfnrt", c);
		if (simple && c) {
			out[w++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
			continue;
		}
		unsigned cp, lo;
		if (c != 'u' || n - 1 - i < 4 || hex4(line + i, &cp) < 0)
			return -1;
		i += 4;
		if (cp >= 0xd800 && cp <= 0xdbff) {
			if (n - 1 - i < 6 || line[i] != '\\' || line[i + 1] != 'u' ||
			    hex4(line + i + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
				return -1;
			i += 6;
			cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		} else if (cp >= 0xdc80 && cp <= 0xdcff) {
			out[w++] = (char)(cp - 0xdc00); /* a raw byte */
			continue;
		} else if (cp >= 0xdc00 && cp <= 0xdfff) {
			return -1;
		}
		w += put_utf8(out + w, cp);
	}
	return (long)w;
}

/* Length of the well-formed UTF-8 character at s[0..n), 0 if none. */
static size_t utf8_char(const unsigned char *s, size_t n)
{
	size_t len = s[0] < 0x80                    ? 1
	             : s[0] >= 0xc2 && s[0] <= 0xdf ? 2
	             : s[0] >= 0xe0 && s[0] <= 0xef ? 3
	             : s[0] >= 0xf0 && s[0] <= 0xf4 ? 4
	                                            : 0;
	if (len == 0 || n < len)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((s[i] & 0xc0) != 0x80)
			return 0;
	if ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] > 0x9f) ||
	    (s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] > 0x8f))
		return 0;
	return len;
}

/* Prints s[0..n) as one JSON string line, other bytes as \uDCxx. */
static void json_print(const char *s, size_t n)
{
	putchar('"');
	for (size_t i = 0; i < n;) {
		unsigned char c = (unsigned char)s[i];
		size_t l = utf8_char((const unsigned char *)s + i, n - i);
		if (l == 0) {
			printf("\\u%04X", 0xdc00u + c);
			i++;
		} else if (c == '"' || c == '\\') {
			printf("\\%c", c);
			i++;
		} else if (c < 0x20 || c == 0x7f) {
			printf("\\u%04X", c);
			i++;
		} else {
			fwrite(s + i, 1, l, stdout);
			i += l;
		}
	}
	puts("\"");
}

/* --decode: each stdin line of ids to one JSON string of their bytes. */
static int decode_lines(const tokenizer_t *tok)
{
	char *line = NULL, piece[4096];
	size_t cap = 0, tcap = 0, tn;
	char *text = NULL;
	int status = 0;
	while (getline(&line, &cap, stdin) >= 0) {
		tn = 0;
		int32_t prev = -1;
		for (char *p = line, *end;; p = end) {
			long id = strtol(p, &end, 10);
			if (end == p)
				break;
			int n = tokenizer_decode_piece(tok, prev, (int32_t)id, piece, sizeof piece);
			if (n < 0) {
				fprintf(stderr, "itt-tokenize: bad id %ld\n", id);
				status = 1;
				n = 0;
			}
			if (tn + (size_t)n > tcap) {
				tcap = 2 * (tn + (size_t)n) + 64;
				char *bigger = realloc(text, tcap);
				if (!bigger) {
					status = 1;
					break;
				}
				text = bigger;
			}
			if (n > 0)
				memcpy(text + tn, piece, (size_t)n);
			tn += (size_t)n;
			prev = (int32_t)id;
		}
		json_print(text ? text : "", tn);
	}
	free(line);
	free(text);
	return status;
}

/* --info: the special ids and rules as one JSON line. */
static int print_info(const tokenizer_t *tok)
{
	uint32_t n = tokenizer_n_vocab(tok);
	printf("{\"n_vocab\": %u, \"bos\": %d, \"eos\": %d, \"eot\": %d, \"add_bos\": %s, "
	       "\"eog\": [",
	       n, (int)tokenizer_bos(tok), (int)tokenizer_eos(tok), (int)tokenizer_eot(tok),
	       tokenizer_add_bos(tok) ? "true" : "false");
	const char *sep = "";
	for (uint32_t i = 0; i < n; i++) {
		if (tokenizer_is_eog(tok, (int32_t)i)) {
			printf("%s%u", sep, i);
			sep = ", ";
		}
	}
	puts("]}");
	return 0;
}

/* --inp: llama.cpp's test-tokenizer-0 cases to one line of ids each. */
static int encode_inp(const tokenizer_t *tok, const char *path)
{
	static const char SEP[] = "\n__ggml_vocab_test__\n";
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "itt-tokenize: cannot open %s\n", path);
		return 1;
	}
	size_t size = 0, cap = 1 << 16, n;
	char *buf = malloc(cap);
	while (buf && (n = fread(buf + size, 1, cap - size, f)) > 0) {
		size += n;
		if (size == cap) {
			char *bigger = realloc(buf, cap *= 2);
			if (!bigger) {
				free(buf);
				buf = NULL;
			}
			buf = bigger;
		}
	}
	fclose(f);
	if (!buf)
		return 1;
	size_t ids_cap = 1 << 16, n_ids;
	int32_t *ids = malloc(ids_cap * sizeof *ids);
	int status = ids ? 0 : 1;
	struct itt_err err = {0};
	for (size_t pos = 0; status == 0 && pos < size;) {
		char *hit = memmem(buf + pos, size - pos, SEP, sizeof SEP - 1);
		size_t len = hit ? (size_t)(hit - (buf + pos)) : size - pos;
		if (tokenizer_encode_flags(tok, buf + pos, len, 0, ids, ids_cap, &n_ids, &err) <
		    0) {
			status = die("encode", &err);
			break;
		}
		for (size_t i = 0; i < n_ids; i++)
			printf(" %d", (int)ids[i]);
		putchar('\n');
		pos += len + (hit ? sizeof SEP - 1 : 0);
	}
	free(ids);
	free(buf);
	return status;
}

int main(int argc, char **argv)
{
	const char *gguf_path = NULL, *l2c_path = NULL, *inp_path = NULL;
	bool bos = false, special = false, decode = false, info = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--bos") == 0)
			bos = true;
		else if (strcmp(argv[i], "--special") == 0)
			special = true;
		else if (strcmp(argv[i], "--decode") == 0)
			decode = true;
		else if (strcmp(argv[i], "--info") == 0)
			info = true;
		else if (strcmp(argv[i], "--inp") == 0 && i + 1 < argc)
			inp_path = argv[++i];
		else if (strcmp(argv[i], "--llama2c") == 0 && i + 1 < argc)
			l2c_path = argv[++i];
		else if (argv[i][0] != '-' && !gguf_path)
			gguf_path = argv[i];
		else
			gguf_path = l2c_path = NULL, argc = 0;
	}
	if (!gguf_path == !l2c_path) {
		fprintf(stderr,
		        "usage: itt-tokenize [--bos] [--special] (MODEL.gguf | --llama2c TOK.bin)\n"
		        "       itt-tokenize --inp CASES.inp MODEL.gguf\n"
		        "       itt-tokenize (--decode | --info) MODEL.gguf\n"
		        "  stdin: one JSON string per line; stdout: one line of ids each\n");
		return 2;
	}

	struct itt_err err = {0};
	tokenizer_t *tok = NULL;
	if (l2c_path) {
		if (llama2c_load(l2c_path, &tok, &err) < 0)
			return die(l2c_path, &err);
	} else {
		gguf_t *g = NULL;
		if (gguf_open(gguf_path, &g, &err) < 0)
			return die(gguf_path, &err);
		int rc = tokenizer_new(g, &tok, &err);
		gguf_close(&g);
		if (rc < 0)
			return die(gguf_path, &err);
	}

	if (inp_path || decode || info) {
		int st = inp_path ? encode_inp(tok, inp_path)
		         : decode ? decode_lines(tok)
		                  : print_info(tok);
		tokenizer_destroy(&tok);
		return fflush(stdout) != 0 ? 1 : st;
	}
	unsigned flags = (bos ? TOKENIZER_ADD_BOS : 0) | (special ? TOKENIZER_PARSE_SPECIAL : 0);
	char *line = NULL, *text = NULL;
	size_t line_cap = 0, text_cap = 0, ids_cap = 256, n_ids, lineno = 0;
	int32_t *ids = malloc(ids_cap * sizeof *ids);
	ssize_t n;
	int status = 0;
	while (ids && (n = getline(&line, &line_cap, stdin)) >= 0) {
		lineno++;
		if (text_cap < (size_t)n + 1) {
			free(text);
			text_cap = (size_t)n + 1;
			if (!(text = malloc(text_cap))) {
				status = 1;
				break;
			}
		}
		long len = json_unquote(line, (size_t)n, text);
		if (len < 0) {
			fprintf(stderr, "itt-tokenize: stdin line %zu is not a JSON string\n",
			        lineno);
			status = 1;
			break;
		}
		int rc = tokenizer_encode_flags(tok, text, (size_t)len, flags, ids, ids_cap, &n_ids,
		                                &err);
		if (rc == ITT_E_FULL) {
			int32_t *bigger = realloc(ids, n_ids * sizeof *ids);
			if (bigger) {
				ids = bigger;
				ids_cap = n_ids;
				rc = tokenizer_encode_flags(tok, text, (size_t)len, flags, ids,
				                            ids_cap, &n_ids, &err);
			}
		}
		if (rc < 0) {
			fprintf(stderr, "itt-tokenize: line %zu: ", lineno);
			status = die("encode", &err);
			break;
		}
		for (size_t i = 0; i < n_ids; i++)
			printf(i ? " %d" : "%d", (int)ids[i]);
		putchar('\n');
	}
	if (!ids)
		status = 1;
	free(line);
	free(text);
	free(ids);
	tokenizer_destroy(&tok);
	if (fflush(stdout) != 0)
		status = 1;
	return status;
}
