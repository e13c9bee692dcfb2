// The umbrella header compiles as C++ on its own.
#include "carom/carom.h"
int main() { return carom_strerror(CAROM_ETIMEDOUT)[0] == 0; }
