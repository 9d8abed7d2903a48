/* A library linked against libterrahost_missing_dep.so, which is not installed. */
int terrahost_missing_dep_answer(void);
int terrahost_needs_dep(void) { return terrahost_missing_dep_answer(); }
