#include <stdio.h>

int main(void) {
    printf("MKOSI-COMPAT-OK %s\n", GREETING);
    return 0;
}
