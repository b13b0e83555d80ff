// The sketches under AddressSanitizer (tests/test_native.py): update, merge, serialize and
// deserialize, including corrupt input, with invariants checked. Exits non-zero on failure.
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <vector>

#include "sketches/exact_values.h"
#include "sketches/kll_sketch.h"
#include "sketches/moments_sketch.h"

using loopserve::sketches::ExactValues;
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

  // ExactValues: blocks written past their end (the padding) and over the growth steps, both
  // types, appended, serialized, and refused when past the capacity or truncated.
  ExactValues kept(5000), other(5000);
  size_t written = 0;
  for (size_t block = 1; written + block <= 3000; written += block, block = block * 3 % 257 + 1) {
    float* out = kept.next<float>(block, 7);
    check(out != nullptr, "room for a block under the capacity");
    for (size_t i = 0; i < block + 7; ++i) out[i] = static_cast<float>(written + i);  // the padding too
    kept.added<float>(block);
  }
  double* wide = other.next<double>(1000, 0);
  for (size_t i = 0; i < 1000; ++i) wide[i] = i % 10 == 0 ? NAN : -static_cast<double>(i);
  other.added<double>(1000);
  check(kept.fits(other.size()), "the union fits");
  kept.append(other);
  check(kept.size() == written + 1000 && kept.finite().size() == written + 900, "kept values, NaN passed over");
  check(kept.at(0) == 0.0 && kept.at(written - 1) == static_cast<double>(written - 1), "values in order");
  check(kept.next<float>(5000, 0) == nullptr && kept.complete(), "past the capacity: nothing written, owner spills");
  const std::vector<uint8_t> values_bytes = kept.serialize();
  const ExactValues again = ExactValues::deserialize(values_bytes.data(), values_bytes.size());
  check(again.serialize() == values_bytes, "values round trip");
  for (size_t cut = 0; cut < values_bytes.size(); cut += 97) {
    try {
      ExactValues::deserialize(values_bytes.data(), cut);
      check(false, "truncated values accepted");
    } catch (const std::invalid_argument&) {
    }
  }
  kept.drop();
  check(!kept.complete() && kept.size() == 0 && kept.next<double>(1, 0) == nullptr, "dropped");

  std::printf(failures ? "failed\n" : "ok\n");
  return failures ? 1 : 0;
}
