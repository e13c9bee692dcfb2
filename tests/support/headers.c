/* The umbrella header compiles as C11 on its own. */
#include "carom/carom.h"
int main(void) { return carom_strerror(CAROM_ETIMEDOUT)[0] == 0; }
