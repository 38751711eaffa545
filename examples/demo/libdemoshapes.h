/* libdemoshapes: the small shape library the demo links against, so that a profile of the
 * demo attributes allocations to more than one module.
 *
 * SPDX-License-Identifier: MIT OR Apache-2.0
 */
#pragma once

enum shape_kind { SHAPE_CIRCLE, SHAPE_SQUARE, SHAPE_TRIANGLE };

struct shape {
        enum shape_kind kind;
        double size[3]; /* radius; side; three sides */
        char *name;     /* owned */
};

/* Creates a shape called `name` (copied).  Returns NULL when out of memory.  Free with
 * shape_free().  Thread-safe. */
struct shape *shape_new(enum shape_kind kind, const double size[3], const char *name);

/* Frees the shape and its name.  Accepts NULL. */
void shape_free(struct shape *s);

/* Returns the area (0 for a triangle whose sides do not close). */
double shape_area(const struct shape *s);

/* Returns a one-line description such as "circle c12: r=3.0", malloc'd; the caller frees
 * it.  NULL when out of memory. */
char *shape_describe(const struct shape *s);
