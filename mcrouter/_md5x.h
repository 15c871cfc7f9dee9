/* MD5 of several short keys at once, for placing the keys of a bulk call.
 *
 * Each lane of a vector carries one key's MD5 state, so one pass of the 64
 * steps hashes MD5X_LANES keys: about 160 instructions a key with the AVX2
 * clone, block set-up included (callgrind), against 800 for _hash.pyx's
 * md5_block; the baseline SSE2 build does half a vector per operation.  Keys of at
 * most 55 bytes only: those fit one block with their padding.  The result is
 * what key_hash gives for H_MD5: the digest's first four bytes, little-endian.
 * GCC and clang vector extensions; any target, any byte order.
 */
#ifndef MCROUTER_MD5X_H
#define MCROUTER_MD5X_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MD5X_LANES 8
#define MD5X_MAX_KEY 55

typedef uint32_t md5x_v __attribute__((vector_size(4 * MD5X_LANES)));

/* an AVX2 clone chosen at load time where the CPU has it (GCC, glibc ifunc) */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define MD5X_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MD5X_CLONES
#endif

#define MD5X_ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define MD5X_STEP(fn, a, b, c, d, x, s, k) (a) = MD5X_ROTL((a) + (fn) + (x) + (k), s) + (b)
#define MD5X_F(a, b, c, d, x, s, k) MD5X_STEP(((b) & (c)) | (~(b) & (d)), a, b, c, d, x, s, k)
#define MD5X_G(a, b, c, d, x, s, k) MD5X_STEP(((d) & (b)) | (~(d) & (c)), a, b, c, d, x, s, k)
#define MD5X_H(a, b, c, d, x, s, k) MD5X_STEP((b) ^ (c) ^ (d), a, b, c, d, x, s, k)
#define MD5X_I(a, b, c, d, x, s, k) MD5X_STEP((c) ^ ((b) | ~(d)), a, b, c, d, x, s, k)

/* out[i] = the first 32 bits of MD5(p[i][0:n[i]]), for i < count;
 * count <= MD5X_LANES, every n[i] <= MD5X_MAX_KEY */
MD5X_CLONES
static void md5x_first_words(const uint8_t **p, const size_t *n, int count,
                             uint32_t *out)
{
    uint32_t blk[MD5X_LANES][16];       /* each key's padded block, as words */
    md5x_v m[16], a, b, c, d;
    int i, j;

    memset(blk, 0, sizeof blk);
    for (i = 0; i < count; i++) {
        uint8_t *w = (uint8_t *)blk[i];
        memcpy(w, p[i], n[i]);
        w[n[i]] = 0x80;
        blk[i][14] = (uint32_t)(n[i] << 3);     /* the length in bits */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (j = 0; j < 14; j++)                /* MD5's words are little-endian */
            blk[i][j] = __builtin_bswap32(blk[i][j]);
#endif
    }
    for (j = 0; j < 16; j++)
        for (i = 0; i < MD5X_LANES; i++)
            m[j][i] = blk[i][j];
    a = (md5x_v){0} + 0x67452301u;
    b = (md5x_v){0} + 0xefcdab89u;
    c = (md5x_v){0} + 0x98badcfeu;
    d = (md5x_v){0} + 0x10325476u;
    MD5X_F(a, b, c, d, m[0], 7, 0xd76aa478u);
    MD5X_F(d, a, b, c, m[1], 12, 0xe8c7b756u);
    MD5X_F(c, d, a, b, m[2], 17, 0x242070dbu);
    MD5X_F(b, c, d, a, m[3], 22, 0xc1bdceeeu);
    MD5X_F(a, b, c, d, m[4], 7, 0xf57c0fafu);
    MD5X_F(d, a, b, c, m[5], 12, 0x4787c62au);
    MD5X_F(c, d, a, b, m[6], 17, 0xa8304613u);
    MD5X_F(b, c, d, a, m[7], 22, 0xfd469501u);
    MD5X_F(a, b, c, d, m[8], 7, 0x698098d8u);
    MD5X_F(d, a, b, c, m[9], 12, 0x8b44f7afu);
    MD5X_F(c, d, a, b, m[10], 17, 0xffff5bb1u);
    MD5X_F(b, c, d, a, m[11], 22, 0x895cd7beu);
    MD5X_F(a, b, c, d, m[12], 7, 0x6b901122u);
    MD5X_F(d, a, b, c, m[13], 12, 0xfd987193u);
    MD5X_F(c, d, a, b, m[14], 17, 0xa679438eu);
    MD5X_F(b, c, d, a, m[15], 22, 0x49b40821u);
    MD5X_G(a, b, c, d, m[1], 5, 0xf61e2562u);
    MD5X_G(d, a, b, c, m[6], 9, 0xc040b340u);
    MD5X_G(c, d, a, b, m[11], 14, 0x265e5a51u);
    MD5X_G(b, c, d, a, m[0], 20, 0xe9b6c7aau);
    MD5X_G(a, b, c, d, m[5], 5, 0xd62f105du);
    MD5X_G(d, a, b, c, m[10], 9, 0x02441453u);
    MD5X_G(c, d, a, b, m[15], 14, 0xd8a1e681u);
    MD5X_G(b, c, d, a, m[4], 20, 0xe7d3fbc8u);
    MD5X_G(a, b, c, d, m[9], 5, 0x21e1cde6u);
    MD5X_G(d, a, b, c, m[14], 9, 0xc33707d6u);
    MD5X_G(c, d, a, b, m[3], 14, 0xf4d50d87u);
    MD5X_G(b, c, d, a, m[8], 20, 0x455a14edu);
    MD5X_G(a, b, c, d, m[13], 5, 0xa9e3e905u);
    MD5X_G(d, a, b, c, m[2], 9, 0xfcefa3f8u);
    MD5X_G(c, d, a, b, m[7], 14, 0x676f02d9u);
    MD5X_G(b, c, d, a, m[12], 20, 0x8d2a4c8au);
    MD5X_H(a, b, c, d, m[5], 4, 0xfffa3942u);
    MD5X_H(d, a, b, c, m[8], 11, 0x8771f681u);
    MD5X_H(c, d, a, b, m[11], 16, 0x6d9d6122u);
    MD5X_H(b, c, d, a, m[14], 23, 0xfde5380cu);
    MD5X_H(a, b, c, d, m[1], 4, 0xa4beea44u);
    MD5X_H(d, a, b, c, m[4], 11, 0x4bdecfa9u);
    MD5X_H(c, d, a, b, m[7], 16, 0xf6bb4b60u);
    MD5X_H(b, c, d, a, m[10], 23, 0xbebfbc70u);
    MD5X_H(a, b, c, d, m[13], 4, 0x289b7ec6u);
    MD5X_H(d, a, b, c, m[0], 11, 0xeaa127fau);
    MD5X_H(c, d, a, b, m[3], 16, 0xd4ef3085u);
    MD5X_H(b, c, d, a, m[6], 23, 0x04881d05u);
    MD5X_H(a, b, c, d, m[9], 4, 0xd9d4d039u);
    MD5X_H(d, a, b, c, m[12], 11, 0xe6db99e5u);
    MD5X_H(c, d, a, b, m[15], 16, 0x1fa27cf8u);
    MD5X_H(b, c, d, a, m[2], 23, 0xc4ac5665u);
    MD5X_I(a, b, c, d, m[0], 6, 0xf4292244u);
    MD5X_I(d, a, b, c, m[7], 10, 0x432aff97u);
    MD5X_I(c, d, a, b, m[14], 15, 0xab9423a7u);
    MD5X_I(b, c, d, a, m[5], 21, 0xfc93a039u);
    MD5X_I(a, b, c, d, m[12], 6, 0x655b59c3u);
    MD5X_I(d, a, b, c, m[3], 10, 0x8f0ccc92u);
    MD5X_I(c, d, a, b, m[10], 15, 0xffeff47du);
    MD5X_I(b, c, d, a, m[1], 21, 0x85845dd1u);
    MD5X_I(a, b, c, d, m[8], 6, 0x6fa87e4fu);
    MD5X_I(d, a, b, c, m[15], 10, 0xfe2ce6e0u);
    MD5X_I(c, d, a, b, m[6], 15, 0xa3014314u);
    MD5X_I(b, c, d, a, m[13], 21, 0x4e0811a1u);
    MD5X_I(a, b, c, d, m[4], 6, 0xf7537e82u);
    MD5X_I(d, a, b, c, m[11], 10, 0xbd3af235u);
    MD5X_I(c, d, a, b, m[2], 15, 0x2ad7d2bbu);
    MD5X_I(b, c, d, a, m[9], 21, 0xeb86d391u);
    a += 0x67452301u;
    for (i = 0; i < count; i++)
        out[i] = a[i];
}

#endif
