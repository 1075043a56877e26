/* itt: the command-line client.  Subcommands dispatch to cmd-*.c. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const char usage[] =
	"usage: itt COMMAND [options]\n"
	"\n"
	"commands:\n"
	"  generate    generate text: --local MODEL.gguf runs the engine in this process,\n"
	"              --broker ENDPOINT --model NAME asks a cluster and streams the answer\n"
	"  stats       a cluster's workers, routes, models, counters and decisions\n"
	"              (--broker ENDPOINT; --watch for a live view)\n"
	"  settings    show or change workers' live settings: get, set, pin, unpin\n"
	"  up          start a broker, N workers and a coordinator on this machine\n"
	"              (--model FILE)\n"
	"  perplexity  mean negative log-likelihood of a text file (--local)\n"
	"  eval        multiple-choice tasks scored by log-likelihood, settings side by side\n"
	"              (--local; `itt eval make-cloze` builds a cloze task from text)\n"
	"  heads       `itt heads search`: pick attention heads for perturbation guidance\n"
	"              on a task's selection split, then compare on its test split\n"
	"  bench       benchmarks: `itt bench engine --local MODEL.gguf` (the engine alone),\n"
	"              `itt bench serve --broker ENDPOINT --model NAME` (a cluster under load)\n"
	"\n"
	"`itt COMMAND --help` describes each command.\n";

static const char generate_help[] =
	"usage: itt generate (--local MODEL.gguf | --broker ENDPOINT --model NAME)\n"
	"                    [--prompt TEXT] [-n N] [--temperature T]\n"
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
	"text, stop_reason, seed and timings.\n"
	"With --broker the request goes to a cluster (e.g. tcp://127.0.0.1:5555) for the model\n"
	"NAME and the text is printed as it arrives; --threads does not apply. Extra options:\n"
	"  --api-key KEY     (default $ITT_API_KEY)   --client-id ID   (default random)\n"
	"  --tenant NAME     --priority N (higher first)   --deadline-ms MS (broker default)\n"
	"  --timeout-ms MS   give up when the broker is silent this long (default 30000)\n"
	"An ERROR from the cluster prints \"itt generate: CODE: reason\" and exits 1.\n"
	"Inference-time techniques (PROTOCOL.md \"Techniques\"):\n"
	"  --guidance-heads L:H,...  perturb these attention heads in a guidance branch\n"
	"  --head-set X      the heads of a head-set: a file with --local, a name the\n"
	"                    broker finds in its --head-sets folder with --broker\n"
	"  --guidance-scale S  guided logits l + s (l - l_branch) (default 0: off)\n"
	"  --guidance-blend U  the perturbed heads attend to (1-U)A + U I (default 1)\n"
	"  --negative-prompt TEXT  classifier-free guidance: the branch is this prompt\n"
	"  --early-exit T --exit-layers L,...  stop a token's layers after layer L when\n"
	"                    top-1 minus top-2 probability >= T (whole-model workers)\n"
	"  --compare         (--local) also run the full model: report agreement\n"
	"  --speculative ngram|exit  (--broker) exact speculative decoding with prompt\n"
	"                    n-gram drafts or early-exit drafts of the first K layers\n"
	"  --draft N         at most N drafts a step, 1..16 (default 4)\n"
	"  --exit-draft-layers K  layers of an exit draft, 1..n_layers-1\n";

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	const char *cmd = argv[1];
	if (!strcmp(cmd, "generate")) {
		struct gen_opts o;
		bool broker = false;
		for (int i = 2; i < argc; i++) {
			if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
				fputs(generate_help, stdout);
				return 0;
			}
			broker |= !strcmp(argv[i], "--broker");
		}
		if (broker)
			return cmd_generate_broker(argc - 2, argv + 2);
		int rc = cli_parse_gen(argc - 2, argv + 2, &o, cmd);
		if (rc)
			return rc;
		if (o.local)
			return cmd_generate_local(&o);
		fprintf(stderr,
			"itt generate: --local MODEL.gguf or --broker ENDPOINT is required\n%s",
			generate_help);
		return 2;
	}
	if (!strcmp(cmd, "perplexity"))
		return cmd_perplexity(argc - 2, argv + 2);
	if (!strcmp(cmd, "eval"))
		return cmd_eval(argc - 2, argv + 2);
	if (!strcmp(cmd, "heads"))
		return cmd_heads(argc - 2, argv + 2);
	if (!strcmp(cmd, "bench"))
		return cmd_bench(argc - 2, argv + 2);
	if (!strcmp(cmd, "stats"))
		return cmd_stats(argc - 2, argv + 2);
	if (!strcmp(cmd, "settings"))
		return cmd_settings(argc - 2, argv + 2);
	if (!strcmp(cmd, "up"))
		return cmd_up(argc - 2, argv + 2);
	fprintf(stderr, "itt: unknown command \"%s\"\n%s", cmd, usage);
	return 2;
}
