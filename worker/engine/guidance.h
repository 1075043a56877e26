/* guidance: the parameters of the inference-time techniques that steer or
 * shorten the forward pass, and the guidance arithmetic itself.  Pure
 * functions (the head-set file helpers aside, which only read or write the
 * one file they are given); nothing here runs the model.
 *
 * Head lists.  A set of attention heads is written "L:H,L:H,..." with L a
 * global layer index and H a query head, both from 0.  It becomes a mask
 * [n_layers][n_heads] of bytes (1: perturbed), the form forward.h's
 * struct forward_perturb takes.  Parsing refuses an empty list, a malformed
 * item, a layer or head outside the model and a head listed twice, with a
 * message naming the item.
 *
 * Head-set files (what a head-selection search saves and --head-set loads;
 * the broker's --head-sets folder reads the same NAME.heads files):
 *     # itt-head-set model=NAME layers=N heads=H
 *     # comments, blank lines; "#" starts a comment anywhere on a line
 *     2:3
 *     4:0
 * One L:H per line, no duplicates, at least one.  The header is a comment
 * (so readers that know only L:H lines accept the file); it names the model
 * the heads were chosen for (NAME: no spaces, informational) and its shape,
 * which, when the header is there, must match the model they are used with.
 *
 * Guidance.  With l the logits of the main branch and l_pert those of the
 * perturbed branch (perturbation guidance) or of the negative prompt
 * (classifier-free guidance), the guided logits are
 *     g = l + s (l - l_pert)
 * restricted to the tokens that are plausible under l: a token whose
 * probability under l is below cut * max probability gets -inf ("adaptive
 * plausibility constraint").  s = 0 is guidance off: g = l exactly, no cut.
 *
 * Early exit parameters: a list "1,2,3" of global layers after which the
 * head is tried, strictly ascending, each below n_layers - 1 (after the
 * last layer the head runs anyway). */
#ifndef ITT_GUIDANCE_H
#define ITT_GUIDANCE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define GUIDANCE_DEFAULT_CUT 0.1f
#define GUIDANCE_MAX_NAME 128

/* Parses spec into mask [n_layers * n_heads] (cleared first); *n_set gets
 * the number of heads.  ITT_E_INVALID with a reason on any bad item. */
int guidance_parse_heads(const char *spec, uint32_t n_layers, uint32_t n_heads, uint8_t *mask,
                         uint32_t *n_set, struct itt_err *err);

/* Writes the mask as "L:H,L:H" (ascending) into buf; returns the length it
 * needs (excluding the NUL), like snprintf. */
size_t guidance_format_heads(const uint8_t *mask, uint32_t n_layers, uint32_t n_heads, char *buf,
                             size_t cap);

/* Parses a head-set file's text (len bytes, need not end in NUL) for a
 * model of n_layers x n_heads into mask; the header's model name goes to
 * name (cap GUIDANCE_MAX_NAME) when name is not NULL.  Errors name the line. */
int guidance_parse_head_set(const char *text, size_t len, uint32_t n_layers, uint32_t n_heads,
                            uint8_t *mask, uint32_t *n_set, char *name, struct itt_err *err);
/* The same from a file (ITT_E_IO when it cannot be read). */
int guidance_load_head_set(const char *path, uint32_t n_layers, uint32_t n_heads, uint8_t *mask,
                           uint32_t *n_set, char *name, struct itt_err *err);
/* Writes a head-set file for model name (spaces become '_'); ITT_E_INVALID
 * for an empty mask, ITT_E_IO when the file cannot be written. */
int guidance_save_head_set(const char *path, const char *name, uint32_t n_layers,
                           uint32_t n_heads, const uint8_t *mask, struct itt_err *err);

/* out[i] = l[i] + s (l[i] - l_pert[i]) where l[i] >= max(l) + log(cut),
 * else -inf; s = 0: out = l.  out may be l or l_pert. */
void guidance_combine(const float *l, const float *l_pert, uint32_t vocab, float scale, float cut,
                      float *out);

/* Parameter checks, ITT_E_INVALID with a reason: scale s finite and >= 0,
 * blend u in [0, 1], early-exit threshold in [0, 1]. */
int guidance_check_scale(float s, struct itt_err *err);
int guidance_check_blend(float u, struct itt_err *err);
int guidance_check_threshold(float t, struct itt_err *err);

/* Parses "1,2,3" into layers[cap] (strictly ascending, each < n_layers - 1);
 * *n gets the count. */
int guidance_parse_exit_layers(const char *spec, uint32_t n_layers, uint32_t *layers,
                               uint32_t cap, uint32_t *n, struct itt_err *err);

#endif
