// The sketches under AddressSanitizer (tests/test_native.py): update, merge, serialize and
// deserialize, including corrupt input, with invariants checked. Exits non-zero on failure.
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <vector>

#include "sketches/kll_sketch.h"
#include "sketches/moments_sketch.h"

using loopserve::sketches::KllSketch;
using loopserve::sketches::MomentsSketch;

int main() {
  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok) {
      ++failures;
      std::fprintf(stderr, "FAIL: %s\n", what);
    }
  };
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  std::vector<KllSketch> replicas(4);
  MomentsSketch moments;
  for (int i = 0; i < 400000; ++i) {
    const double x = normal(rng);
    replicas[static_cast<size_t>(i) % replicas.size()].update(x);
    moments.update(x);
  }
  KllSketch merged;
  for (const KllSketch& r : replicas) {
    const std::vector<uint8_t> bytes = r.serialize();
    merged.merge(KllSketch::deserialize(bytes.data(), bytes.size()));
  }
  check(merged.count() == 400000, "merged count");
  check(std::fabs(merged.rank(0.0) - 0.5) <= KllSketch::normalized_rank_error(200), "median rank");
  check(std::fabs(moments.mean()) < 0.01 && std::fabs(moments.variance() - 1.0) < 0.01, "moments");
  // Every truncation of valid bytes is refused, never read past.
  const std::vector<uint8_t> bytes = merged.serialize();
  for (size_t cut = 0; cut < bytes.size(); cut += 7) {
    try {
      KllSketch::deserialize(bytes.data(), cut);
      check(false, "truncated sketch accepted");
    } catch (const std::invalid_argument&) {
    }
  }
  std::printf(failures ? "failed\n" : "ok\n");
  return failures ? 1 : 0;
}
