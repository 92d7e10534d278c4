/* The unit test the build script runs with WITH_TESTS=1. */
#include <string.h>
#include "greeting.h"

int main(void) {
    return strstr(greeting(), "Hello") == greeting() ? 0 : 1;
}
