/* A library whose constructor dereferences NULL (SIGSEGV). The pointer is volatile so
   that the compiler cannot see it is null and drop or rewrite the store. */
__attribute__((constructor)) static void hostile(void) {
    int *volatile p = 0;
    *p = 42;
}
