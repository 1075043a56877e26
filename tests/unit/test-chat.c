/* test-chat: pins down worker/engine/chat.c.  For every family one fixed
 * conversation (system, user, assistant, user) and its rendering written
 * out from the family's reference template; the details each template has
 * (trimming, where the system message goes, spaces around [INST]);
 * detection by markers on excerpts of real templates; the refusals
 * (unknown template, roles, alternation); the GGUF fallback.  The
 * byte-for-byte comparison with jinja2 on the real template files is
 * tests/integration/test_chat_templates.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat.h"
#include "gguf-write.h"
#include "testutil.h"

static const struct chat_msg conv[] = {
    {"system", "You are a helpful assistant."},
    {"user", "Hello!"},
    {"assistant", "Hi there, how can I help?"},
    {"user", "Tell me a story."},
};
#define N_CONV (sizeof conv / sizeof conv[0])

/* Renders msgs with the named template (BOS "<s>", EOS "</s>") and
 * compares with want. */
static void check_render(const char *name, const struct chat_msg *msgs, size_t n, const char *want)
{
	struct chat_template t;
	struct itt_err err = {0};
	char *out = NULL;
	size_t len = 0;
	assert_int_equal(chat_template_by_name(name, &t, &err), 0);
	assert_string_equal(chat_template_name(&t), name);
	int rc = chat_render(&t, msgs, n, "<s>", "</s>", &out, &len, &err);
	if (rc)
		fail_msg("%s: %s", name, err.msg);
	assert_int_equal(len, strlen(want));
	assert_string_equal(out, want);
	free(out);
}

static void test_chatml_writes_every_turn_verbatim(void **state)
{
	(void)state;
	check_render("chatml", conv, N_CONV,
	             "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
	             "<|im_start|>user\nHello!<|im_end|>\n"
	             "<|im_start|>assistant\nHi there, how can I help?<|im_end|>\n"
	             "<|im_start|>user\nTell me a story.<|im_end|>\n"
	             "<|im_start|>assistant\n");
	/* no trimming: content goes out as it came */
	const struct chat_msg sp[] = {{"user", "  hi \n"}};
	check_render("chatml", sp, 1,
	             "<|im_start|>user\n  hi \n<|im_end|>\n<|im_start|>assistant\n");
}

static void test_llama2_puts_the_system_block_in_the_first_turn(void **state)
{
	(void)state;
	check_render("llama2", conv, N_CONV,
	             "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST]"
	             " Hi there, how can I help? </s>"
	             "<s>[INST] Tell me a story. [/INST]");
	/* the whole first content (system block included) is stripped */
	const struct chat_msg sp[] = {{"system", " S "}, {"user", "u  "}};
	check_render("llama2", sp, 2, "<s>[INST] <<SYS>>\n S \n<</SYS>>\n\nu [/INST]");
}

static void test_llama3_trims_contents(void **state)
{
	(void)state;
	check_render("llama3", conv, N_CONV,
	             "<s><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful "
	             "assistant.<|eot_id|>"
	             "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
	             "<|start_header_id|>assistant<|end_header_id|>\n\nHi there, how can I "
	             "help?<|eot_id|>"
	             "<|start_header_id|>user<|end_header_id|>\n\nTell me a story.<|eot_id|>"
	             "<|start_header_id|>assistant<|end_header_id|>\n\n");
	const struct chat_msg sp[] = {{"user", " \thi\n"}};
	check_render("llama3", sp, 1,
	             "<s><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
	             "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void test_llama31_always_writes_the_dated_system_turn(void **state)
{
	(void)state;
	check_render("llama3.1", conv, N_CONV,
	             "<s><|start_header_id|>system<|end_header_id|>\n\n"
	             "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
	             "You are a helpful assistant.<|eot_id|>"
	             "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
	             "<|start_header_id|>assistant<|end_header_id|>\n\nHi there, how can I "
	             "help?<|eot_id|>"
	             "<|start_header_id|>user<|end_header_id|>\n\nTell me a story.<|eot_id|>"
	             "<|start_header_id|>assistant<|end_header_id|>\n\n");
	check_render("llama3.1", conv + 1, 1,
	             "<s><|start_header_id|>system<|end_header_id|>\n\n"
	             "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
	             "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
	             "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void test_mistral_variants_differ_in_spaces(void **state)
{
	(void)state;
	/* the system message joins the last user turn */
	check_render("mistral-v1", conv, N_CONV,
	             "<s> [INST] Hello! [/INST] Hi there, how can I help?</s>"
	             " [INST] You are a helpful assistant.\n\nTell me a story. [/INST]");
	check_render("mistral-v3", conv, N_CONV,
	             "<s>[INST] Hello![/INST] Hi there, how can I help?</s>"
	             "[INST] You are a helpful assistant.\n\nTell me a story.[/INST]");
	check_render("mistral-v3-tekken", conv, N_CONV,
	             "<s>[INST]Hello![/INST]Hi there, how can I help?</s>"
	             "[INST]You are a helpful assistant.\n\nTell me a story.[/INST]");
	/* v7: a system prompt block of its own */
	check_render("mistral-v7", conv, N_CONV,
	             "<s>[SYSTEM_PROMPT] You are a helpful assistant.[/SYSTEM_PROMPT]"
	             "[INST] Hello![/INST] Hi there, how can I help?</s>"
	             "[INST] Tell me a story.[/INST]");
	check_render("mistral-v7-tekken", conv, N_CONV,
	             "<s>[SYSTEM_PROMPT]You are a helpful assistant.[/SYSTEM_PROMPT]"
	             "[INST]Hello![/INST]Hi there, how can I help?</s>"
	             "[INST]Tell me a story.[/INST]");
	/* v3 trims the answers; tekken does not */
	const struct chat_msg sp[] = {{"user", "u"}, {"assistant", " a "}, {"user", "v"}};
	check_render("mistral-v3", sp, 3, "<s>[INST] u[/INST] a</s>[INST] v[/INST]");
	check_render("mistral-v3-tekken", sp, 3, "<s>[INST]u[/INST] a </s>[INST]v[/INST]");
}

static void test_gemma_calls_the_assistant_model(void **state)
{
	(void)state;
	check_render("gemma", conv, N_CONV,
	             "<s><start_of_turn>user\nYou are a helpful assistant.\n\nHello!<end_of_turn>\n"
	             "<start_of_turn>model\nHi there, how can I help?<end_of_turn>\n"
	             "<start_of_turn>user\nTell me a story.<end_of_turn>\n"
	             "<start_of_turn>model\n");
}

static void test_phi3_and_granite(void **state)
{
	(void)state;
	check_render("phi3", conv, N_CONV,
	             "<|system|>\nYou are a helpful assistant.<|end|>\n"
	             "<|user|>\nHello!<|end|>\n"
	             "<|assistant|>\nHi there, how can I help?<|end|>\n"
	             "<|user|>\nTell me a story.<|end|>\n"
	             "<|assistant|>\n");
	check_render("granite", conv, N_CONV,
	             "<|start_of_role|>system<|end_of_role|>You are a helpful "
	             "assistant.<|end_of_text|>\n"
	             "<|start_of_role|>user<|end_of_role|>Hello!<|end_of_text|>\n"
	             "<|start_of_role|>assistant<|end_of_role|>Hi there, how can I "
	             "help?<|end_of_text|>\n"
	             "<|start_of_role|>user<|end_of_role|>Tell me a story.<|end_of_text|>\n"
	             "<|start_of_role|>assistant<|end_of_role|>");
}

static enum chat_family detect(const char *text, struct chat_template *t)
{
	return chat_template_detect(text, strlen(text), t);
}

static void test_detection_by_markers(void **state)
{
	struct chat_template t;
	(void)state;
	/* excerpts of the real templates */
	assert_int_equal(detect("{%- for message in messages %}{{- '<|im_start|>' + message.role + "
	                        "'\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endfor %}",
	                        &t),
	                 CHAT_CHATML);
	assert_false(t.bos);
	assert_null(t.default_system);
	assert_int_equal(detect("{{- bos_token -}}\n{{- '<|im_start|>system\\n' }}", &t),
	                 CHAT_CHATML);
	assert_true(t.bos);
	assert_int_equal(detect("{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba "
	                        "Cloud. You are a helpful assistant.<|im_end|>\\n' }}",
	                        &t),
	                 CHAT_CHATML);
	assert_non_null(t.default_system);
	/* Phi-4 uses <|im_start|> with <|im_sep|>: not chatml */
	assert_int_equal(detect("{{'<|im_start|>' + message['role'] + '<|im_sep|>'}}", &t),
	                 CHAT_UNKNOWN);
	assert_int_equal(
	    detect("{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' %}"
	           "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}",
	           &t),
	    CHAT_LLAMA2);
	assert_int_equal(detect("{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] "
	                        "+ ' [/INST]' }}",
	                        &t),
	                 CHAT_MISTRAL_V1);
	assert_int_equal(detect("{{- \"[INST] \" + message[\"content\"] + \"[/INST]\" }}", &t),
	                 CHAT_MISTRAL_V3);
	assert_int_equal(detect("{{- \"[INST]\" + message[\"content\"] + \"[/INST]\" }}", &t),
	                 CHAT_MISTRAL_V3_TEKKEN);
	assert_int_equal(detect("{{- '[SYSTEM_PROMPT] ' + message['content'] + "
	                        "'[/SYSTEM_PROMPT]' }}{{- '[INST] ' }}",
	                        &t),
	                 CHAT_MISTRAL_V7);
	assert_int_equal(detect("{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
	                        "{{- '[INST]' + message['content'] + '[/INST]' }}",
	                        &t),
	                 CHAT_MISTRAL_V7_TEKKEN);
	assert_true(t.bos);
	assert_int_equal(detect("{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim "
	                        "+ '<end_of_turn>\\n' }}",
	                        &t),
	                 CHAT_GEMMA);
	assert_int_equal(detect("{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
	                        "{{ '<|assistant|>\\n' }}",
	                        &t),
	                 CHAT_PHI3);
	assert_int_equal(detect("{{- '<|start_header_id|>' + message['role'] + "
	                        "'<|end_header_id|>\\n\\n'+ message['content'] | trim + "
	                        "'<|eot_id|>' }}",
	                        &t),
	                 CHAT_LLAMA3);
	assert_int_equal(detect("{{- \"Cutting Knowledge Date: December 2023\\n\" }}{{- \"Today "
	                        "Date: \" + date_string }}{{- '<|start_header_id|>' }}"
	                        "{{ '<|end_header_id|>' }}",
	                        &t),
	                 CHAT_LLAMA31);
	assert_int_equal(detect("{{- '<|start_of_role|>user<|end_of_role|>' }}", &t), CHAT_GRANITE);
	assert_int_equal(detect("{{ message.content }}", &t), CHAT_UNKNOWN);
	assert_int_equal(detect("", &t), CHAT_UNKNOWN);
	/* a family's name is that family */
	assert_int_equal(detect("llama3.1", &t), CHAT_LLAMA31);
	assert_int_equal(detect("gemma", &t), CHAT_GEMMA);
}

static void test_refusals(void **state)
{
	struct chat_template t;
	struct itt_err err = {0};
	char *out = NULL;
	size_t len;
	(void)state;
	assert_int_equal(chat_template_by_name("jinja", &t, &err), ITT_E_NOTFOUND);
	assert_non_null(strstr(err.msg, "chatml"));
	detect("{{ message.content }}", &t);
	assert_int_equal(chat_render(&t, conv, N_CONV, NULL, NULL, &out, &len, &err),
	                 ITT_E_INVALID);
	assert_null(out);
	assert_non_null(strstr(err.msg, "not one itt recognises"));
	chat_template_by_name("chatml", &t, NULL);
	const struct chat_msg bad_role[] = {{"user", "a"}, {"tool", "b"}};
	assert_int_equal(chat_render(&t, bad_role, 2, NULL, NULL, &out, &len, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "messages[1].role"));
	const struct chat_msg late_system[] = {{"user", "a"}, {"system", "b"}};
	assert_int_equal(chat_render(&t, late_system, 2, NULL, NULL, &out, &len, &err),
	                 ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "only come first"));
	/* chatml takes any order; llama2 insists on alternation */
	const struct chat_msg twice[] = {{"user", "a"}, {"user", "b"}};
	assert_int_equal(chat_render(&t, twice, 2, NULL, NULL, &out, &len, &err), 0);
	free(out);
	chat_template_by_name("llama2", &t, NULL);
	assert_int_equal(chat_render(&t, twice, 2, NULL, NULL, &out, &len, &err), ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "alternate"));
}

/* A message without a role or content is refused with a reason, the first
 * one too (its role was compared with "system" before the check; found by
 * tests/fuzz/fuzz-chat.c). */
static void test_missing_role_or_content_refused(void **state)
{
	struct chat_template t;
	struct itt_err err = {0};
	char *out = NULL;
	size_t len = 0;
	(void)state;
	chat_template_by_name("chatml", &t, NULL);
	const struct chat_msg no_role[] = {{NULL, "a"}};
	assert_int_equal(chat_render(&t, no_role, 1, NULL, NULL, &out, &len, &err),
	                 ITT_E_INVALID);
	assert_null(out);
	assert_non_null(strstr(err.msg, "messages[0] has no role"));
	const struct chat_msg no_content[] = {{"system", "s"}, {"user", NULL}};
	assert_int_equal(chat_render(&t, no_content, 2, NULL, NULL, &out, &len, &err),
	                 ITT_E_INVALID);
	assert_non_null(strstr(err.msg, "messages[1] has no content"));
}

static void test_end_of_turn_texts(void **state)
{
	struct chat_template t;
	(void)state;
	chat_template_by_name("chatml", &t, NULL);
	assert_string_equal(chat_end_of_turn(&t), "<|im_end|>");
	chat_template_by_name("llama3.1", &t, NULL);
	assert_string_equal(chat_end_of_turn(&t), "<|eot_id|>");
	chat_template_by_name("gemma", &t, NULL);
	assert_string_equal(chat_end_of_turn(&t), "<end_of_turn>");
	chat_template_by_name("phi3", &t, NULL);
	assert_string_equal(chat_end_of_turn(&t), "<|end|>");
	chat_template_by_name("mistral-v7", &t, NULL);
	assert_null(chat_end_of_turn(&t)); /* EOS ends the turn */
}

/* A GGUF holding only the given chat template (NULL: none). */
static void gguf_with_template(const char *tmpl, const char *path)
{
	gguf_writer_t *w = NULL;
	struct itt_err err = {0};
	assert_int_equal(gguf_writer_new(&w, &err), 0);
	assert_int_equal(gguf_writer_add_str(w, "general.architecture", "llama", &err), 0);
	if (tmpl)
		assert_int_equal(gguf_writer_add_str(w, "tokenizer.chat_template", tmpl, &err), 0);
	assert_int_equal(gguf_writer_write(w, path, false, &err), 0);
	gguf_writer_destroy(&w);
}

static void test_gguf_template_and_fallback(void **state)
{
	char path[] = "/tmp/itt-test-chat-XXXXXX";
	struct chat_template t;
	struct itt_err err = {0};
	gguf_t *g = NULL;
	(void)state;
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	/* no template: chatml, marked as the fallback */
	gguf_with_template(NULL, path);
	assert_int_equal(gguf_open(path, &g, &err), 0);
	assert_int_equal(chat_template_from_gguf(g, &t, &err), 0);
	assert_int_equal(t.family, CHAT_CHATML);
	assert_true(t.fallback);
	gguf_close(&g);
	/* a recognised template */
	gguf_with_template("{{ '<start_of_turn>model\\n' }}", path);
	assert_int_equal(gguf_open(path, &g, &err), 0);
	assert_int_equal(chat_template_from_gguf(g, &t, &err), 0);
	assert_int_equal(t.family, CHAT_GEMMA);
	assert_false(t.fallback);
	gguf_close(&g);
	/* an unrecognised one is not replaced by the fallback */
	gguf_with_template("{{ messages }}", path);
	assert_int_equal(gguf_open(path, &g, &err), 0);
	assert_int_equal(chat_template_from_gguf(g, &t, &err), 0);
	assert_int_equal(t.family, CHAT_UNKNOWN);
	gguf_close(&g);
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_chatml_writes_every_turn_verbatim),
	    cmocka_unit_test(test_llama2_puts_the_system_block_in_the_first_turn),
	    cmocka_unit_test(test_llama3_trims_contents),
	    cmocka_unit_test(test_llama31_always_writes_the_dated_system_turn),
	    cmocka_unit_test(test_mistral_variants_differ_in_spaces),
	    cmocka_unit_test(test_gemma_calls_the_assistant_model),
	    cmocka_unit_test(test_phi3_and_granite),
	    cmocka_unit_test(test_detection_by_markers),
	    cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_missing_role_or_content_refused),
	    cmocka_unit_test(test_end_of_turn_texts),
	    cmocka_unit_test(test_gguf_template_and_fallback),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
