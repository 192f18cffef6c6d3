// Small tensor helpers shared by the tests of common/fl.
#ifndef FEDTUNE_TESTS_COMMON_FL_TEST_TENSORS_H_
#define FEDTUNE_TESTS_COMMON_FL_TEST_TENSORS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace fedtune::fl::test_tensors {

// A float32 vector tensor holding `values`.
inline at::Tensor Vec(std::vector<float> values) {
  return at::from_blob(values.data(), {static_cast<int64_t>(values.size())}, at::kFloat).clone();
}

// The elements of `t` (flattened, as float).
inline std::vector<float> ToVec(const at::Tensor& t) {
  at::Tensor c = t.to(at::kFloat).contiguous().reshape({-1});
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// Standard normal float32 values from a fixed seed.
inline at::Tensor Randn(std::vector<int64_t> shape, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  return at::randn(shape, gen, at::TensorOptions().dtype(at::kFloat));
}

}  // namespace fedtune::fl::test_tensors

#endif  // FEDTUNE_TESTS_COMMON_FL_TEST_TENSORS_H_
