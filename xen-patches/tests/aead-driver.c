/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * Host driver for xen-patches/0004's ChaCha20-Poly1305 (tsys-aead.c), used
 * by aead.sh:  aead-driver seal|open KEY NONCE AAD DATA  (hex arguments;
 * open takes ciphertext || tag).  Prints the result in hex, or exits 1 when
 * open refuses the tag.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tsys-aead.h"

static size_t unhex(const char *hex, uint8_t *out, size_t max)
{
    size_t n = 0;

    while (hex[0] && hex[1]) {
        if (n == max || sscanf(hex, "%2hhx", &out[n]) != 1) {
            fprintf(stderr, "aead-driver: bad hex argument\n");
            exit(2);
        }
        n++;
        hex += 2;
    }
    return n;
}

static void put_hex(const uint8_t *p, size_t n)
{
    while (n--)
        printf("%02x", *p++);
}

int main(int argc, char **argv)
{
    static uint8_t key[32], nonce[12], aad[1024], buf[1 << 17];
    uint8_t tag[16];
    size_t aad_len, len;

    if (argc != 6 || (strcmp(argv[1], "seal") && strcmp(argv[1], "open"))) {
        fprintf(stderr, "usage: %s seal|open KEY NONCE AAD DATA (hex)\n", argv[0]);
        return 2;
    }
    if (unhex(argv[2], key, sizeof(key)) != sizeof(key) ||
        unhex(argv[3], nonce, sizeof(nonce)) != sizeof(nonce)) {
        fprintf(stderr, "aead-driver: a key is 32 bytes, a nonce 12\n");
        return 2;
    }
    aad_len = unhex(argv[4], aad, sizeof(aad));
    len = unhex(argv[5], buf, sizeof(buf));
    if (!strcmp(argv[1], "seal")) {
        tsys_aead_seal(key, nonce, aad, aad_len, buf, len, tag);
        put_hex(buf, len);
        put_hex(tag, sizeof(tag));
    } else {
        if (len < sizeof(tag))
            return 2;
        len -= sizeof(tag);
        memcpy(tag, buf + len, sizeof(tag));
        if (tsys_aead_open(key, nonce, aad, aad_len, buf, len, tag))
            return 1;
        put_hex(buf, len);
    }
    printf("\n");
    return 0;
}
