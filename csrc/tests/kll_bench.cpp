// Microbenchmark of KllSketch::update (per value, as the bindings call it, and batched), in
// this thread's CPU time, best of a few runs; standalone:
//   g++ -O3 -std=c++17 -Icsrc csrc/tests/kll_bench.cpp -o /tmp/kll_bench && /tmp/kll_bench
#include <algorithm>
#include <cstdio>
#include <ctime>
#include <random>
#include <vector>

#include "sketches/kll_sketch.h"

using loopserve::sketches::KllSketch;

// This thread's CPU time: other work on the machine changes it less than wall time.
static double cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

template <typename F>
double best_ns_per_value(size_t n, size_t reps, int tries, F&& f) {
  double best = 1e30;
  for (int t = 0; t < tries; ++t) {
    const double start = cpu_seconds();
    for (size_t r = 0; r < reps; ++r) f();
    const double s = cpu_seconds() - start;
    best = std::min(best, s / static_cast<double>(n * reps) * 1e9);
  }
  return best;
}

int main() {
  std::mt19937_64 rng(0);
  std::normal_distribution<double> normal;
  std::vector<double> x(2'000'000);
  for (double& v : x) v = normal(rng);
  std::vector<double> sorted_x = x;
  std::sort(sorted_x.begin(), sorted_x.end());
  double sink = 0;
  for (size_t n : {size_t{12'500}, size_t{100'000}, size_t{2'000'000}}) {
    const size_t reps = 4'000'000 / n + 1;
    const double per = best_ns_per_value(n, reps, 5, [&] {
      KllSketch s;
      for (size_t i = 0; i < n; ++i) s.update(x[i]);
      sink += s.rank(0.0);
    });
    const double per_sorted = best_ns_per_value(n, reps, 3, [&] {
      KllSketch s;
      for (size_t i = 0; i < n; ++i) s.update(sorted_x[i]);
      sink += s.rank(0.0);
    });
    const double batch = best_ns_per_value(n, reps, 5, [&] {
      KllSketch s;
      s.update(x.data(), n);
      sink += s.rank(0.0);
    });
    std::printf("n=%8zu  update(double) %6.2f ns/value  sorted input %6.2f  batch %6.2f\n", n, per, per_sorted, batch);
  }
  return sink == 12345.0;
}
