// The generator's random numbers: a seeded std::mt19937_64 with portable draws (the standard library's
// distributions differ between implementations; these do not), and seed derivation so that each image's stream
// depends only on (dataset seed, image index, purpose) and never on thread count or drawing order.
#ifndef FEDTUNE_COMMON_SYNTH_RNG_H_
#define FEDTUNE_COMMON_SYNTH_RNG_H_

#include <cmath>
#include <cstdint>
#include <random>

#include "common/seed.h"

namespace fedtune::synth {

// A seed for the sub-stream (a, b) of `seed`; distinct (a, b) give unrelated streams.
inline uint64_t DeriveSeed(uint64_t seed, uint64_t a, uint64_t b = 0) {
  return MixSeed(MixSeed(MixSeed(seed) ^ a) + 0x632be59bd9b4e019ULL * (b + 1));
}

// Not thread-safe; use one per thread (they are cheap).
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}

  uint64_t Next() { return engine_(); }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(engine_() >> 11) * (1.0 / 9007199254740992.0); }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  // Uniform integer in [0, n); n > 0.
  int UniformInt(int n) { return static_cast<int>(Uniform() * n); }
  bool Bernoulli(double p) { return Uniform() < p; }
  // Standard normal (Box-Muller; one value per call for simplicity).
  double Normal() {
    const double u1 = 1.0 - Uniform();  // (0, 1]
    const double u2 = Uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::mt19937_64 engine_;
};

}  // namespace fedtune::synth

#endif  // FEDTUNE_COMMON_SYNTH_RNG_H_
