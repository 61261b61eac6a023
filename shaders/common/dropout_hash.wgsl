// common/dropout_hash.wgsl: the counter-based hash that draws every dropout mask, written once
// and included (`// #include common/dropout_hash.wgsl`) by dropout.wgsl and by the fused
// epilogues of conv2d/tiled.wgsl and batchnorm2d/tiled.wgsl, so that all three draw the same
// mask for the same seed. Mirrored bit for bit by `reference::mask_bits` in src/ops/dropout.rs.
//   mix(z)  = lowbias32: z ^= z >> 16; z *= 0x21f0aaad; z ^= z >> 15; z *= 0x735a2d97; z ^= z >> 15
//             (all u32, wrapping; a bijection with near-ideal avalanche, from
//             Chris Wellons' hash-prospector search)
//   key0    = mix(seed_lo ^ mix(seed_hi ^ 0x85ebca6b))
//   key1    = mix(seed_hi ^ mix(seed_lo ^ 0xc2b2ae35))
//   bits(i) = mix(mix(i ^ key0) + key1);  element i is kept when bits(i) >= threshold
//   Two keyed rounds: the first alone would make two seeds' masks mere index
//   permutations of each other. Only u32 multiply, xor, shift, add: every adapter
//   computes the same bits, and so the same mask, for the same seed.
// No bindings: the including shader passes the seed.

fn hash_mix(x: u32) -> u32 {
    var z = x;
    z ^= z >> 16u;
    z *= 0x21f0aaadu;
    z ^= z >> 15u;
    z *= 0x735a2d97u;
    z ^= z >> 15u;
    return z;
}

// mix() of four values at once (the vec4 paths hash four neighbouring elements).
fn hash_mix4(x: vec4<u32>) -> vec4<u32> {
    var z = x;
    z ^= z >> vec4<u32>(16u);
    z *= vec4<u32>(0x21f0aaadu);
    z ^= z >> vec4<u32>(15u);
    z *= vec4<u32>(0x735a2d97u);
    z ^= z >> vec4<u32>(15u);
    return z;
}

// (key0, key1) from the seed: the same for every element, so computed once a thread.
fn hash_keys(seed_lo: u32, seed_hi: u32) -> vec2<u32> {
    let key0 = hash_mix(seed_lo ^ hash_mix(seed_hi ^ 0x85ebca6bu));
    let key1 = hash_mix(seed_hi ^ hash_mix(seed_lo ^ 0xc2b2ae35u));
    return vec2<u32>(key0, key1);
}

// bits(i) for element i.
fn hash_bits(keys: vec2<u32>, i: u32) -> u32 {
    return hash_mix(hash_mix(i ^ keys.x) + keys.y);
}
