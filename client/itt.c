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

/* The commands: run() gets argv[0] = the command's name, then its options
 * (options_only: the options alone). */
static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
	bool options_only;
} commands[] = {
	{"generate", cmd_generate, false},  {"perplexity", cmd_perplexity, false},
	{"eval", cmd_eval, true},           {"heads", cmd_heads, true},
	{"bench", cmd_bench, false},        {"stats", cmd_stats, false},
	{"settings", cmd_settings, false},  {"up", cmd_up, false},
};

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		fputs(usage, argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].options_only ? commands[i].run(argc - 2, argv + 2)
							: commands[i].run(argc - 1, argv + 1);
	fprintf(stderr, "itt: unknown command \"%s\"\n%s", argv[1], usage);
	return 2;
}
