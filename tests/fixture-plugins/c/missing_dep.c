/* The dependency of needs_dep.c; the tests never install it next to that library. */
int terrahost_missing_dep_answer(void) { return 42; }
