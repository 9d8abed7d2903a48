/* A library whose constructor calls exit(0): a silent "success" of whoever loads it. */
#include <stdlib.h>
__attribute__((constructor)) static void hostile(void) { exit(0); }
