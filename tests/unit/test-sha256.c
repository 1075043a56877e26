/* test-sha256: pins down worker/engine/sha256.c against the FIPS 180-4 example
 * vectors ("abc", the empty message, the 448-bit two-block message, a
 * million 'a'), against its own result when the message is fed in pieces
 * of every length around the block boundary, and against the system's
 * sha256sum on a file of a few MiB. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sha256.h"
#include "testutil.h"

static void hex_of(const void *msg, size_t len, char hex[SHA256_HEX])
{
	struct sha256 c;
	uint8_t d[SHA256_DIGEST];
	sha256_init(&c);
	sha256_update(&c, msg, len);
	sha256_final(&c, d);
	sha256_hex(d, hex);
}

static void test_fips_vectors(void **state)
{
	char hex[SHA256_HEX];
	hex_of("abc", 3, hex);
	assert_string_equal(hex,
	                    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	hex_of("", 0, hex);
	assert_string_equal(hex,
	                    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	const char *m448 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	hex_of(m448, strlen(m448), hex);
	assert_string_equal(hex,
	                    "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

static void test_million_a_fed_in_uneven_pieces(void **state)
{
	static char a[1000];
	struct sha256 c;
	uint8_t d[SHA256_DIGEST];
	char hex[SHA256_HEX];
	memset(a, 'a', sizeof a);
	sha256_init(&c);
	size_t left = 1000000, k = 1;
	while (left) {
		size_t n = k < left ? k : left;
		sha256_update(&c, a, n);
		left -= n;
		k = k % 997 + 1; /* 1, 2, ..., 997, 1, ... */
	}
	sha256_final(&c, d);
	sha256_hex(d, hex);
	assert_string_equal(hex,
	                    "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

/* Every split point of messages of 0..200 bytes gives the one-piece digest
 * (the padding crosses a block for 56..63 bytes mod 64). */
static void test_split_anywhere_same_digest(void **state)
{
	uint8_t msg[200], d[SHA256_DIGEST];
	char whole[SHA256_HEX], parts[SHA256_HEX];
	for (size_t i = 0; i < sizeof msg; i++)
		msg[i] = (uint8_t)(i * 7 + 3);
	for (size_t n = 0; n <= sizeof msg; n++) {
		hex_of(msg, n, whole);
		for (size_t cut = 0; cut <= n; cut += 13) {
			struct sha256 c;
			sha256_init(&c);
			sha256_update(&c, msg, cut);
			sha256_update(&c, msg + cut, n - cut);
			sha256_final(&c, d);
			sha256_hex(d, parts);
			assert_string_equal(whole, parts);
		}
	}
}

static void test_file_matches_sha256sum(void **state)
{
	const size_t size = (3u << 20) + 4321; /* several 1 MiB reads and a tail */
	uint8_t *buf = malloc(size);
	assert_non_null(buf);
	uint32_t x = 12345;
	for (size_t i = 0; i < size; i++) {
		x = x * 1103515245u + 12345u;
		buf[i] = (uint8_t)(x >> 16);
	}
	const char *path = tu_tmp_path("test-sha256.bin");
	assert_int_equal(tu_write_file(path, buf, size), 0);
	free(buf);

	char cmd[1200], want[SHA256_HEX] = "", hex[SHA256_HEX];
	snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
	FILE *p = popen(cmd, "r");
	if (!p || fscanf(p, "%64s", want) != 1) {
		if (p)
			pclose(p);
		remove(path);
		skip();
	}
	pclose(p);
	uint64_t bytes = 0;
	struct itt_err err = {0};
	assert_int_equal(sha256_file(path, hex, &bytes, &err), 0);
	remove(path);
	assert_int_equal(bytes, size);
	assert_string_equal(hex, want);
}

static void test_missing_file_is_an_error(void **state)
{
	char hex[SHA256_HEX];
	uint64_t bytes = 0;
	struct itt_err err = {0};
	assert_int_equal(sha256_file("/nonexistent/itt-sha256", hex, &bytes, &err), ITT_E_IO);
	assert_non_null(strstr(err.msg, "/nonexistent/itt-sha256"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fips_vectors),
	    cmocka_unit_test(test_million_a_fed_in_uneven_pieces),
	    cmocka_unit_test(test_split_anywhere_same_digest),
	    cmocka_unit_test(test_file_matches_sha256sum),
	    cmocka_unit_test(test_missing_file_is_an_error),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
