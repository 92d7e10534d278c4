#include "greeting.h"

const char *greeting(void) {
    return "Hello from the mkosi example project";
}
