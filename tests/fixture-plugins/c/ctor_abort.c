/* A library whose constructor calls abort(): loading it kills the process (SIGABRT). */
#include <stdlib.h>
__attribute__((constructor)) static void hostile(void) { abort(); }
