/* itt: the command-line client.  Subcommands dispatch to cmd-*.c. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
	"usage: itt COMMAND [options]\n"
	"\n"
	"commands:\n"
	"  generate    generate text: --local MODEL.gguf runs the engine in this process\n"
	"  perplexity  mean negative log-likelihood of a text file (--local)\n"
	"  bench       benchmarks: `itt bench engine --local MODEL.gguf`\n"
	"\n"
	"`itt COMMAND --help` describes each command.\n";

static const char generate_help[] =
	"usage: itt generate --local MODEL.gguf [--prompt TEXT] [-n N] [--temperature T]\n"
	"                    [--top-k K] [--top-p P] [--min-p P] [--typical P]\n"
	"                    [--repeat-penalty R] [--repeat-last-n N] [--presence-penalty X]\n"
	"                    [--frequency-penalty X] [--seed S] [--stop STR]... [--threads T]\n"
	"                    [--json]\n"
	"Prints the prompt and its continuation (at most N tokens, default 128; generation\n"
	"also stops at end-of-sequence, a stop string or the context length).\n"
	"Sampling follows llama.cpp's chain and defaults: penalties (repeat 1.0 over the last\n"
	"64 tokens), top-k 40, typical 1.0, top-p 0.95, min-p 0.05, temperature 0.8;\n"
	"temperature <= 0 is greedy. Without --seed a random seed is used and reported.\n"
	"--json prints one object: prompt, prompt_tokens (ids, BOS included), tokens,\n"
	"text, stop_reason, seed and timings.\n";

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "generate")) {
		struct gen_opts o;
		for (int i = 2; i < argc; i++)
			if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
				fputs(generate_help, stdout);
				return 0;
			}
		int rc = cli_parse_gen(argc - 2, argv + 2, &o, cmd);
		if (rc)
			return rc;
		if (o.local)
			return cmd_generate_local(&o);
		fprintf(stderr, "itt generate: --local MODEL.gguf is required\n%s", generate_help);
		return 2;
	}
	if (!strcmp(cmd, "perplexity"))
		return cmd_perplexity(argc - 2, argv + 2);
	if (!strcmp(cmd, "bench"))
		return cmd_bench(argc - 2, argv + 2);
	fprintf(stderr, "itt: unknown command \"%s\"\n%s", cmd, usage);
	return 2;
}
